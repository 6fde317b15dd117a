"""Pydantic configurations of the surrogate models (no torch import here)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class MLPConfig(BaseModel):
    """Multi-layer perceptron: the reference's defaults (40 neurons, 5 layers, LeakyReLU 0.3)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["mlp"] = Field("mlp", description="Model family discriminator")
    neurons: int = Field(40, ge=1, description="Width of every hidden layer")
    layers: int = Field(5, ge=1, description="Linear layers before the output layer (input layer + hidden layers)")
    negative_slope: float = Field(0.3, description="LeakyReLU slope after every layer but the output")


class GNNConfig(BaseModel):
    """Encode-process-decode message-passing GNN (the reference's defaults, but residual: see that field)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["gnn"] = Field("gnn", description="Model family discriminator")
    hidden_channels: int = Field(16, ge=1, description="Width of node and edge latent features")
    n_mlp_hidden_layers: int = Field(2, ge=0, description="Hidden layers inside every internal MLP")
    n_message_passing_layers: int = Field(6, ge=1, description="Processor blocks (edge update + node update)")
    layer_norm: bool = Field(True, description="LayerNorm after encoders and processor MLPs")
    residual: bool = Field(
        True, description="Predict the change: output = the first n_out inputs + the decoder's output (the targets "
                          "are the first inputs some steps later, as in MeshGraphNets). False: the reference's GNN, "
                          "which predicts the fields themselves; measured on medium it stays below persistence (skill "
                          "< 0) after 800 optimiser steps where the residual one reaches 0.8 in 200")


ModelConfig = Annotated[MLPConfig | GNNConfig, Field(discriminator="kind")]
