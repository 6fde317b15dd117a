"""Predict a motif-6 workflow's staging traffic from micro measurements, and check it against the mini run.

* :mod:`.model`: one operation's cost (latency + bytes / bandwidth, contention) from a micro run;
* :mod:`.workflow`: the workflow's staging operations, counted from its parameters;
* :mod:`.estimate`: the two together: traffic per sync step, overhead share, time to solution;
* :mod:`.check`: predicted against measured for each mini benchmark of a run.
"""
