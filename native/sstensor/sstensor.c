/*
 * sstensor - a Redis module that stands in for RedisAI's tensor and model *storage*.
 *
 * Why it exists: SmartSim 0.8.0 always starts its Orchestrator with `--loadmodule $RAI_PATH`
 * and SmartRedis talks RedisAI's wire protocol (AI.TENSORSET/AI.TENSORGET, AI.MODELSTORE...),
 * but RedisAI is only built by `smart build`, which needs the internet (and its licence
 * forbids redistributing binaries). This module implements the storage subset of RedisAI's
 * commands with RedisAI-compatible replies, so the real SmartSim + SmartRedis stack runs.
 *
 * What it is NOT: an ML runtime. AI.MODELEXECUTE, AI.SCRIPT*, AI.DAG*, AI.INFO, AI.MODELRUN
 * answer "ERR not available: the sstensor stand-in has no RedisAI runtime". Reports must name
 * it ("tensor store: sstensor stand-in, not RedisAI"); `MODULE LIST` shows it as "sstensor".
 *
 * Commands:
 *   AI.TENSORSET key type d1..dn [BLOB b | VALUES v1..vk]   (no data: zero-filled tensor)
 *   AI.TENSORGET key [META] [BLOB | VALUES]     META BLOB -> [dtype, T, shape, [..], blob, b]
 *   AI.MODELSTORE key backend device [TAG t] [BATCHSIZE n] [MINBATCHSIZE n] [MINBATCHTIMEOUT n]
 *                 [INPUTS n i..] [OUTPUTS n o..] BLOB chunk1 [chunk2 ...]   (opaque blob)
 *   AI.MODELGET key [META] [BLOB]   blob larger than MODEL_CHUNK_SIZE -> array of chunks
 *   AI.MODELDEL key;  AI.CONFIG GET MODEL_CHUNK_SIZE;  AI.CONFIG MODEL_CHUNK_SIZE n
 * Tensors are deleted with DEL/UNLINK like any key (SmartRedis does so).
 *
 * Copies: a BLOB argument is kept as the RedisModuleString the server parsed (RetainString),
 * so storing it copies nothing (Redis hands bulk arguments >= 32 KiB over without copying its
 * query buffer); VALUES are parsed straight into the stored buffer and a tensor without data
 * is one zeroed allocation (calloc: no fill pass). AI.TENSORGET BLOB replies from the stored
 * bytes with one copy into the client's output buffer, as GET does: the module API has no
 * reply that avoids it. Values are saved in RDB and rewritten to the AOF as the commands that
 * recreate them. Build: native/sstensor/build.sh (gcc -O2 -fPIC -shared).
 */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "rm_min.h"

#define MAX_DIMS 32
#define MAX_ZERO_FILL_BYTES ((size_t)512 << 20)
#define DEFAULT_CHUNK (511LL * 1024 * 1024) /* RedisAI's default MODEL_CHUNK_SIZE */
#define NO_RUNTIME "ERR not available: the sstensor stand-in has no RedisAI runtime"

static RedisModuleType *TensorType, *ModelType;
static long long ChunkSize = DEFAULT_CHUNK;

/* ------------------------------------------------------------------ dtypes */
enum { DT_FLOAT, DT_DOUBLE, DT_INT8, DT_INT16, DT_INT32, DT_INT64, DT_UINT8, DT_UINT16, DT_COUNT };
static const char *DT_NAME[DT_COUNT] = {"FLOAT", "DOUBLE", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16"};
static const size_t DT_SIZE[DT_COUNT] = {4, 8, 1, 2, 4, 8, 1, 2};
static const long long DT_MIN[DT_COUNT] = {0, 0, INT8_MIN, INT16_MIN, INT32_MIN, INT64_MIN, 0, 0};
static const long long DT_MAX[DT_COUNT] = {0, 0, INT8_MAX, INT16_MAX, INT32_MAX, INT64_MAX, UINT8_MAX, UINT16_MAX};

static int dtype_parse(RedisModuleString *s) {
    const char *p = RedisModule_StringPtrLen(s, NULL);
    for (int i = 0; i < DT_COUNT; i++)
        if (strcasecmp(p, DT_NAME[i]) == 0) return i;
    return -1;
}

/* ------------------------------------------------------------------ values */
typedef struct {
    int dtype, ndims;
    long long dims[MAX_DIMS];
    const char *data;         /* the tensor's bytes, C order */
    size_t len;               /* their count (element count x element size) */
    RedisModuleString *owner; /* the retained BLOB argument that holds data, or NULL: data is ours to free */
} Tensor;

typedef struct {
    RedisModuleString *backend, *device, *tag; /* tag is "" when none was given */
    long long batch, minbatch, minbatchtimeout;
    int ninputs, noutputs, nchunks;
    RedisModuleString **inputs, **outputs, **chunks;
    size_t size; /* total blob bytes */
} Model;

static RedisModuleString *own(RedisModuleCtx *ctx, RedisModuleString *s) {
    RedisModule_RetainString(ctx, s);
    return s;
}

static void free_strings(RedisModuleString **v, int n) {
    for (int i = 0; i < n; i++) RedisModule_FreeString(NULL, v[i]);
    RedisModule_Free(v);
}

static void tensor_free(void *value) {
    Tensor *t = value;
    if (t->owner) RedisModule_FreeString(NULL, t->owner);
    else RedisModule_Free((void *)t->data);
    RedisModule_Free(t);
}

static void model_free(void *value) {
    Model *m = value;
    RedisModule_FreeString(NULL, m->backend);
    RedisModule_FreeString(NULL, m->device);
    RedisModule_FreeString(NULL, m->tag);
    free_strings(m->inputs, m->ninputs);
    free_strings(m->outputs, m->noutputs);
    free_strings(m->chunks, m->nchunks);
    RedisModule_Free(m);
}

static size_t tensor_mem(const void *value) { return sizeof(Tensor) + ((const Tensor *)value)->len; }

static size_t model_mem(const void *value) { return sizeof(Model) + ((const Model *)value)->size; }

/* Open `key` for `mode`; fail (reply sent, NULL returned) when it holds another type, or is
 * empty and `must_exist`. *value gets the stored value or NULL. */
static RedisModuleKey *open_typed(RedisModuleCtx *ctx, RedisModuleString *key, int mode, RedisModuleType *type,
                                  int must_exist, const char *empty_msg, void **value) {
    RedisModuleKey *k = RedisModule_OpenKey(ctx, key, mode);
    *value = NULL;
    if (RedisModule_KeyType(k) == REDISMODULE_KEYTYPE_EMPTY) {
        if (!must_exist) return k;
        RedisModule_CloseKey(k);
        RedisModule_ReplyWithError(ctx, empty_msg);
        return NULL;
    }
    if (RedisModule_ModuleTypeGetType(k) != type) {
        RedisModule_CloseKey(k);
        RedisModule_ReplyWithError(ctx, REDISMODULE_ERRORMSG_WRONGTYPE);
        return NULL;
    }
    *value = RedisModule_ModuleTypeGetValue(k);
    return k;
}

static int reply_cstr(RedisModuleCtx *ctx, const char *s) { return RedisModule_ReplyWithStringBuffer(ctx, s, strlen(s)); }

/* ------------------------------------------------------------------ AI.TENSORSET */
/* Elements in t; -1 when a dimension is negative or their product overflows. */
static long long tensor_count(const Tensor *t) {
    long long n = 1;
    for (int i = 0; i < t->ndims; i++)
        if (t->dims[i] < 0 || __builtin_mul_overflow(n, t->dims[i], &n)) return -1;
    return n;
}

/* Bytes t's shape and dtype need, in *bytes; 0 when that size overflows. */
static int tensor_bytes(const Tensor *t, size_t *bytes) {
    long long count = tensor_count(t);
    return count >= 0 && !__builtin_mul_overflow((size_t)count, DT_SIZE[t->dtype], bytes);
}

/* Parse VALUES straight into the tensor's own buffer (small tensors only: every value is parsed). */
static char *data_from_values(const Tensor *t, RedisModuleString **v, int n) {
    size_t esz = DT_SIZE[t->dtype];
    char *buf = RedisModule_Alloc(n * esz + 1);
    for (int i = 0; i < n; i++) {
        double d;
        long long ll;
        char *dst = buf + i * esz;
        if (t->dtype == DT_FLOAT || t->dtype == DT_DOUBLE) {
            if (RedisModule_StringToDouble(v[i], &d) != REDISMODULE_OK) goto bad;
            if (t->dtype == DT_FLOAT) { float f = (float)d; memcpy(dst, &f, 4); } else memcpy(dst, &d, 8);
        } else {
            if (RedisModule_StringToLongLong(v[i], &ll) != REDISMODULE_OK) goto bad;
            if (ll < DT_MIN[t->dtype] || ll > DT_MAX[t->dtype]) goto bad;
            switch (t->dtype) {
            case DT_INT8: { int8_t x = (int8_t)ll; memcpy(dst, &x, 1); break; }
            case DT_UINT8: { uint8_t x = (uint8_t)ll; memcpy(dst, &x, 1); break; }
            case DT_INT16: { int16_t x = (int16_t)ll; memcpy(dst, &x, 2); break; }
            case DT_UINT16: { uint16_t x = (uint16_t)ll; memcpy(dst, &x, 2); break; }
            case DT_INT32: { int32_t x = (int32_t)ll; memcpy(dst, &x, 4); break; }
            default: memcpy(dst, &ll, 8);
            }
        }
    }
    return buf;
bad:
    RedisModule_Free(buf);
    return NULL;
}

/* Parse "type d1..dn [BLOB b | VALUES ...]" into t (data owned by t); reply and return ERR on error. */
static int tensor_parse(RedisModuleCtx *ctx, RedisModuleString **argv, int argc, Tensor *t) {
    if ((t->dtype = dtype_parse(argv[2])) < 0) return RedisModule_ReplyWithError(ctx, "ERR invalid data type"), REDISMODULE_ERR;
    int i = 3;
    for (; i < argc; i++) {
        long long d;
        if (RedisModule_StringToLongLong(argv[i], &d) != REDISMODULE_OK) break;
        if (d < 0 || t->ndims == MAX_DIMS) return RedisModule_ReplyWithError(ctx, "ERR invalid or too many dimensions"), REDISMODULE_ERR;
        t->dims[t->ndims++] = d;
    }
    size_t bytes;
    if (!tensor_bytes(t, &bytes)) return RedisModule_ReplyWithError(ctx, "ERR tensor shape too large"), REDISMODULE_ERR;
    long long count = tensor_count(t);
    const char *fmt = i < argc ? RedisModule_StringPtrLen(argv[i], NULL) : "";
    if (i == argc) {
        /* A shape alone allocates its zeros here: bound it like a bulk argument (proto-max-bulk-len). */
        if (bytes > MAX_ZERO_FILL_BYTES)
            return RedisModule_ReplyWithError(ctx, "ERR tensor without data larger than 512 MiB: send a BLOB"), REDISMODULE_ERR;
        t->data = RedisModule_Calloc(bytes ? bytes : 1, 1); /* zeroed pages, no fill pass */
    } else if (strcasecmp(fmt, "BLOB") == 0) {
        size_t len;
        if (argc != i + 2) return RedisModule_WrongArity(ctx), REDISMODULE_ERR;
        RedisModule_StringPtrLen(argv[i + 1], &len);
        if (len != bytes) return RedisModule_ReplyWithError(ctx, "ERR data length does not match tensor shape and type"), REDISMODULE_ERR;
        t->owner = own(ctx, argv[i + 1]);
        t->data = RedisModule_StringPtrLen(t->owner, NULL);
    } else if (strcasecmp(fmt, "VALUES") == 0) {
        if (argc - i - 1 != count) return RedisModule_ReplyWithError(ctx, "ERR wrong number of values provided"), REDISMODULE_ERR;
        if (!(t->data = data_from_values(t, argv + i + 1, (int)count)))
            return RedisModule_ReplyWithError(ctx, "ERR invalid value"), REDISMODULE_ERR;
    } else {
        return RedisModule_ReplyWithError(ctx, "ERR invalid argument: expected a dimension, BLOB or VALUES"), REDISMODULE_ERR;
    }
    t->len = bytes;
    return REDISMODULE_OK;
}

static int TensorSet(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    if (argc < 3) return RedisModule_WrongArity(ctx);
    void *old;
    RedisModuleKey *k = open_typed(ctx, argv[1], REDISMODULE_READ | REDISMODULE_WRITE, TensorType, 0, NULL, &old);
    if (!k) return REDISMODULE_OK;
    Tensor *t = RedisModule_Alloc(sizeof(*t));
    memset(t, 0, sizeof(*t));
    if (tensor_parse(ctx, argv, argc, t) != REDISMODULE_OK) {
        RedisModule_Free(t);
        RedisModule_CloseKey(k);
        return REDISMODULE_OK;
    }
    RedisModule_ModuleTypeSetValue(k, TensorType, t); /* frees the old value */
    RedisModule_CloseKey(k);
    RedisModule_ReplicateVerbatim(ctx);
    return RedisModule_ReplyWithSimpleString(ctx, "OK");
}

/* ------------------------------------------------------------------ AI.TENSORGET */
static void reply_values(RedisModuleCtx *ctx, const Tensor *t) {
    const char *p = t->data;
    long long n = tensor_count(t);
    RedisModule_ReplyWithArray(ctx, n);
    for (long long i = 0; i < n; i++) {
        const char *e = p + i * DT_SIZE[t->dtype];
        switch (t->dtype) {
        case DT_FLOAT: { float f; memcpy(&f, e, 4); RedisModule_ReplyWithDouble(ctx, f); break; }
        case DT_DOUBLE: { double d; memcpy(&d, e, 8); RedisModule_ReplyWithDouble(ctx, d); break; }
        case DT_INT8: { int8_t x; memcpy(&x, e, 1); RedisModule_ReplyWithLongLong(ctx, x); break; }
        case DT_UINT8: { uint8_t x; memcpy(&x, e, 1); RedisModule_ReplyWithLongLong(ctx, x); break; }
        case DT_INT16: { int16_t x; memcpy(&x, e, 2); RedisModule_ReplyWithLongLong(ctx, x); break; }
        case DT_UINT16: { uint16_t x; memcpy(&x, e, 2); RedisModule_ReplyWithLongLong(ctx, x); break; }
        case DT_INT32: { int32_t x; memcpy(&x, e, 4); RedisModule_ReplyWithLongLong(ctx, x); break; }
        default: { int64_t x; memcpy(&x, e, 8); RedisModule_ReplyWithLongLong(ctx, x); }
        }
    }
}

static int TensorGet(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    if (argc < 2 || argc > 4) return RedisModule_WrongArity(ctx);
    int meta = 0, blob = 0, values = 0;
    for (int i = 2; i < argc; i++) {
        const char *a = RedisModule_StringPtrLen(argv[i], NULL);
        if (!strcasecmp(a, "META")) meta = 1;
        else if (!strcasecmp(a, "BLOB")) blob = 1;
        else if (!strcasecmp(a, "VALUES")) values = 1;
        else return RedisModule_ReplyWithError(ctx, "ERR unsupported data format");
    }
    if (blob && values) return RedisModule_ReplyWithError(ctx, "ERR both BLOB and VALUES specified");
    if (!meta && !blob && !values) meta = values = 1; /* RedisAI's default */
    void *v;
    RedisModuleKey *k = open_typed(ctx, argv[1], REDISMODULE_READ, TensorType, 1, "ERR tensor key is empty", &v);
    if (!k) return REDISMODULE_OK;
    Tensor *t = v;
    if (meta) {
        RedisModule_ReplyWithArray(ctx, (blob || values) ? 6 : 4);
        reply_cstr(ctx, "dtype");
        reply_cstr(ctx, DT_NAME[t->dtype]);
        reply_cstr(ctx, "shape");
        RedisModule_ReplyWithArray(ctx, t->ndims);
        for (int i = 0; i < t->ndims; i++) RedisModule_ReplyWithLongLong(ctx, t->dims[i]);
        if (blob || values) reply_cstr(ctx, blob ? "blob" : "values");
    }
    if (blob) RedisModule_ReplyWithStringBuffer(ctx, t->data, t->len); /* one copy, into the output buffer */
    if (values) reply_values(ctx, t);
    RedisModule_CloseKey(k);
    return REDISMODULE_OK;
}

/* ------------------------------------------------------------------ AI.MODELSTORE */
static RedisModuleString **own_list(RedisModuleCtx *ctx, RedisModuleString **argv, int n) {
    RedisModuleString **v = RedisModule_Alloc(sizeof(*v) * (n ? n : 1));
    for (int i = 0; i < n; i++) v[i] = own(ctx, argv[i]);
    return v;
}

static int is_backend(RedisModuleString *s) {
    const char *b = RedisModule_StringPtrLen(s, NULL);
    return !strcasecmp(b, "TF") || !strcasecmp(b, "TFLITE") || !strcasecmp(b, "TORCH") || !strcasecmp(b, "ONNX");
}

/* Parse the options after "key backend device"; return the index of the first chunk or -1 (replied). */
static int model_parse(RedisModuleCtx *ctx, RedisModuleString **argv, int argc, Model *m) {
    int i = 4, n;
    long long ll = 0;
    while (i < argc) {
        const char *a = RedisModule_StringPtrLen(argv[i], NULL);
        if (!strcasecmp(a, "BLOB")) return i + 1 < argc ? i + 1 : (RedisModule_ReplyWithError(ctx, "ERR insufficient arguments, missing model BLOB"), -1);
        if (i + 1 >= argc) break;
        if (!strcasecmp(a, "TAG")) {
            RedisModule_FreeString(NULL, m->tag);
            m->tag = own(ctx, argv[i + 1]), i += 2;
            continue;
        }
        if (RedisModule_StringToLongLong(argv[i + 1], &ll) != REDISMODULE_OK || ll < 0) break;
        if (!strcasecmp(a, "BATCHSIZE")) m->batch = ll;
        else if (!strcasecmp(a, "MINBATCHSIZE")) m->minbatch = ll;
        else if (!strcasecmp(a, "MINBATCHTIMEOUT")) m->minbatchtimeout = ll;
        else if (!strcasecmp(a, "INPUTS") || !strcasecmp(a, "OUTPUTS")) {
            if (ll > argc - i - 2) break;  /* before the cast: a huge count must not wrap */
            n = (int)ll;
            int in = !strcasecmp(a, "INPUTS");
            RedisModuleString **v = own_list(ctx, argv + i + 2, n);
            if (in) free_strings(m->inputs, m->ninputs), m->inputs = v, m->ninputs = n;
            else free_strings(m->outputs, m->noutputs), m->outputs = v, m->noutputs = n;
            i += n;
        } else break;
        i += 2;
    }
    RedisModule_ReplyWithError(ctx, "ERR invalid AI.MODELSTORE arguments (expected TAG, BATCHSIZE, MINBATCHSIZE, "
                                    "MINBATCHTIMEOUT, INPUTS, OUTPUTS, then BLOB)");
    return -1;
}

static int ModelStore(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    if (argc < 6) return RedisModule_WrongArity(ctx);
    if (!is_backend(argv[2])) return RedisModule_ReplyWithError(ctx, "ERR unsupported backend");
    void *old;
    RedisModuleKey *k = open_typed(ctx, argv[1], REDISMODULE_READ | REDISMODULE_WRITE, ModelType, 0, NULL, &old);
    if (!k) return REDISMODULE_OK;
    Model *m = RedisModule_Alloc(sizeof(*m));
    memset(m, 0, sizeof(*m));
    m->backend = own(ctx, argv[2]);
    m->device = own(ctx, argv[3]);
    m->tag = RedisModule_CreateString(ctx, "", 0);
    m->inputs = own_list(ctx, NULL, 0);
    m->outputs = own_list(ctx, NULL, 0);
    m->chunks = own_list(ctx, NULL, 0);
    int first = model_parse(ctx, argv, argc, m);
    if (first < 0) {
        model_free(m);
        RedisModule_CloseKey(k);
        return REDISMODULE_OK;
    }
    RedisModule_Free(m->chunks);
    m->nchunks = argc - first;
    m->chunks = own_list(ctx, argv + first, m->nchunks);
    for (int i = 0; i < m->nchunks; i++) {
        size_t len;
        RedisModule_StringPtrLen(m->chunks[i], &len);
        m->size += len;
    }
    RedisModule_ModuleTypeSetValue(k, ModelType, m);
    RedisModule_CloseKey(k);
    RedisModule_ReplicateVerbatim(ctx);
    return RedisModule_ReplyWithSimpleString(ctx, "OK");
}

/* ------------------------------------------------------------------ AI.MODELGET */
/* Reply with bytes [off, off+len) of the model: straight from a stored chunk when the range lies
 * in one (the usual case: SmartRedis chunks with the same MODEL_CHUNK_SIZE), else gathered. */
static void reply_range(RedisModuleCtx *ctx, const Model *m, size_t off, size_t len) {
    size_t base = 0, clen;
    int c = 0;
    const char *p = RedisModule_StringPtrLen(m->chunks[0], &clen);
    while (off >= base + clen && c + 1 < m->nchunks) base += clen, p = RedisModule_StringPtrLen(m->chunks[++c], &clen);
    if (off - base + len <= clen) {
        if (off == base && len == clen) RedisModule_ReplyWithString(ctx, m->chunks[c]);
        else RedisModule_ReplyWithStringBuffer(ctx, p + (off - base), len);
        return;
    }
    char *buf = RedisModule_Alloc(len + 1);
    for (size_t done = 0; done < len; c++) {
        p = RedisModule_StringPtrLen(m->chunks[c], &clen);
        size_t from = off + done - base, n = clen - from < len - done ? clen - from : len - done;
        memcpy(buf + done, p + from, n);
        done += n, base += clen;
    }
    RedisModule_ReplyWithStringBuffer(ctx, buf, len);
    RedisModule_Free(buf);
}

static void reply_blob(RedisModuleCtx *ctx, const Model *m) {
    size_t chunk = (size_t)ChunkSize;
    if (m->size <= chunk) return reply_range(ctx, m, 0, m->size);
    long n = (long)((m->size + chunk - 1) / chunk);
    RedisModule_ReplyWithArray(ctx, n);
    for (size_t off = 0; off < m->size; off += chunk) reply_range(ctx, m, off, m->size - off < chunk ? m->size - off : chunk);
}

static void reply_list(RedisModuleCtx *ctx, RedisModuleString **v, int n) {
    RedisModule_ReplyWithArray(ctx, n);
    for (int i = 0; i < n; i++) RedisModule_ReplyWithString(ctx, v[i]);
}

static int ModelGet(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    if (argc < 2 || argc > 4) return RedisModule_WrongArity(ctx);
    int meta = 0, blob = 0;
    for (int i = 2; i < argc; i++) {
        const char *a = RedisModule_StringPtrLen(argv[i], NULL);
        if (!strcasecmp(a, "META")) meta = 1;
        else if (!strcasecmp(a, "BLOB")) blob = 1;
        else return RedisModule_ReplyWithError(ctx, "ERR unrecognized parameter");
    }
    if (!meta && !blob) meta = 1;
    void *v;
    RedisModuleKey *k = open_typed(ctx, argv[1], REDISMODULE_READ, ModelType, 1, "ERR model key is empty", &v);
    if (!k) return REDISMODULE_OK;
    Model *m = v;
    if (meta) {
        RedisModule_ReplyWithArray(ctx, blob ? 18 : 16);
        reply_cstr(ctx, "backend"), RedisModule_ReplyWithString(ctx, m->backend);
        reply_cstr(ctx, "device"), RedisModule_ReplyWithString(ctx, m->device);
        reply_cstr(ctx, "tag");
        RedisModule_ReplyWithString(ctx, m->tag);
        reply_cstr(ctx, "batchsize"), RedisModule_ReplyWithLongLong(ctx, m->batch);
        reply_cstr(ctx, "minbatchsize"), RedisModule_ReplyWithLongLong(ctx, m->minbatch);
        reply_cstr(ctx, "inputs"), reply_list(ctx, m->inputs, m->ninputs);
        reply_cstr(ctx, "outputs"), reply_list(ctx, m->outputs, m->noutputs);
        reply_cstr(ctx, "minbatchtimeout"), RedisModule_ReplyWithLongLong(ctx, m->minbatchtimeout);
        if (blob) reply_cstr(ctx, "blob");
    }
    if (blob) reply_blob(ctx, m);
    RedisModule_CloseKey(k);
    return REDISMODULE_OK;
}

static int ModelDel(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    if (argc != 2) return RedisModule_WrongArity(ctx);
    void *v;
    RedisModuleKey *k = open_typed(ctx, argv[1], REDISMODULE_READ | REDISMODULE_WRITE, ModelType, 1, "ERR model key is empty", &v);
    if (!k) return REDISMODULE_OK;
    RedisModule_DeleteKey(k);
    RedisModule_CloseKey(k);
    RedisModule_ReplicateVerbatim(ctx);
    return RedisModule_ReplyWithSimpleString(ctx, "OK");
}

/* ------------------------------------------------------------------ AI.CONFIG, runtime commands */
static int Config(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    if (argc < 2) return RedisModule_WrongArity(ctx);
    const char *a = RedisModule_StringPtrLen(argv[1], NULL);
    long long ll;
    if (!strcasecmp(a, "GET")) {
        if (argc != 3) return RedisModule_WrongArity(ctx);
        const char *what = RedisModule_StringPtrLen(argv[2], NULL);
        if (!strcasecmp(what, "MODEL_CHUNK_SIZE")) return RedisModule_ReplyWithLongLong(ctx, ChunkSize);
        return RedisModule_ReplyWithNull(ctx);
    }
    if (!strcasecmp(a, "MODEL_CHUNK_SIZE")) {
        if (argc != 3) return RedisModule_WrongArity(ctx);
        if (RedisModule_StringToLongLong(argv[2], &ll) != REDISMODULE_OK || ll <= 0)
            return RedisModule_ReplyWithError(ctx, "ERR MODEL_CHUNK_SIZE: invalid chunk size");
        ChunkSize = ll;
        RedisModule_ReplicateVerbatim(ctx);
        return RedisModule_ReplyWithSimpleString(ctx, "OK");
    }
    if (!strcasecmp(a, "BACKENDSPATH") || !strcasecmp(a, "LOADBACKEND")) return RedisModule_ReplyWithError(ctx, NO_RUNTIME);
    return RedisModule_ReplyWithError(ctx, "ERR unsupported subcommand");
}

static int NoRuntime(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    (void)argv, (void)argc;
    return RedisModule_ReplyWithError(ctx, NO_RUNTIME);
}

/* ------------------------------------------------------------------ RDB and AOF */
static void tensor_save(RedisModuleIO *io, void *value) {
    Tensor *t = value;
    RedisModule_SaveUnsigned(io, (uint64_t)t->dtype);
    RedisModule_SaveUnsigned(io, (uint64_t)t->ndims);
    for (int i = 0; i < t->ndims; i++) RedisModule_SaveSigned(io, t->dims[i]);
    RedisModule_SaveStringBuffer(io, t->data, t->len); /* the same RDB encoding as SaveString */
}

static void *tensor_load(RedisModuleIO *io, int encver) {
    if (encver != 0) return NULL;
    Tensor *t = RedisModule_Alloc(sizeof(*t));
    memset(t, 0, sizeof(*t));
    t->dtype = (int)RedisModule_LoadUnsigned(io);
    t->ndims = (int)RedisModule_LoadUnsigned(io);
    if (t->dtype < 0 || t->dtype >= DT_COUNT || t->ndims < 0 || t->ndims > MAX_DIMS) return RedisModule_Free(t), NULL;
    for (int i = 0; i < t->ndims; i++) t->dims[i] = RedisModule_LoadSigned(io);
    size_t bytes;
    char *data = RedisModule_LoadStringBuffer(io, &t->len);
    t->data = data;
    if (!tensor_bytes(t, &bytes) || bytes != t->len) return RedisModule_Free(data), RedisModule_Free(t), NULL;
    return t;
}

static void save_list(RedisModuleIO *io, RedisModuleString **v, int n) {
    RedisModule_SaveUnsigned(io, (uint64_t)n);
    for (int i = 0; i < n; i++) RedisModule_SaveString(io, v[i]);
}

static RedisModuleString **load_list(RedisModuleIO *io, int *n) {
    *n = (int)RedisModule_LoadUnsigned(io);
    RedisModuleString **v = RedisModule_Alloc(sizeof(*v) * (*n ? *n : 1));
    for (int i = 0; i < *n; i++) v[i] = RedisModule_LoadString(io);
    return v;
}

static void model_save(RedisModuleIO *io, void *value) {
    Model *m = value;
    RedisModuleString *meta[3] = {m->backend, m->device, m->tag};
    save_list(io, meta, 3);
    RedisModule_SaveSigned(io, m->batch), RedisModule_SaveSigned(io, m->minbatch), RedisModule_SaveSigned(io, m->minbatchtimeout);
    save_list(io, m->inputs, m->ninputs), save_list(io, m->outputs, m->noutputs), save_list(io, m->chunks, m->nchunks);
}

static void *model_load(RedisModuleIO *io, int encver) {
    if (encver != 0) return NULL;
    Model *m = RedisModule_Alloc(sizeof(*m));
    memset(m, 0, sizeof(*m));
    int n;
    RedisModuleString **meta = load_list(io, &n);
    m->backend = meta[0], m->device = meta[1], m->tag = meta[2];
    RedisModule_Free(meta);
    m->batch = RedisModule_LoadSigned(io), m->minbatch = RedisModule_LoadSigned(io), m->minbatchtimeout = RedisModule_LoadSigned(io);
    m->inputs = load_list(io, &m->ninputs), m->outputs = load_list(io, &m->noutputs), m->chunks = load_list(io, &m->nchunks);
    for (int i = 0; i < m->nchunks; i++) {
        size_t len;
        RedisModule_StringPtrLen(m->chunks[i], &len);
        m->size += len;
    }
    return m;
}

/* The AOF gets the command that recreates the value; argument vectors are passed with "v". */
static void tensor_rewrite(RedisModuleIO *aof, RedisModuleString *key, void *value) {
    Tensor *t = value;
    RedisModuleString *dims[MAX_DIMS];
    for (int i = 0; i < t->ndims; i++) dims[i] = RedisModule_CreateStringFromLongLong(NULL, t->dims[i]);
    RedisModule_EmitAOF(aof, "AI.TENSORSET", "scvcb", key, DT_NAME[t->dtype], dims, (size_t)t->ndims, "BLOB", t->data, t->len);
    for (int i = 0; i < t->ndims; i++) RedisModule_FreeString(NULL, dims[i]);
}

static void model_rewrite(RedisModuleIO *aof, RedisModuleString *key, void *value) {
    Model *m = value;
    RedisModule_EmitAOF(aof, "AI.MODELSTORE", "ssscsclclclclvclvcv", key, m->backend, m->device, "TAG", m->tag,
                        "BATCHSIZE", m->batch, "MINBATCHSIZE", m->minbatch, "MINBATCHTIMEOUT", m->minbatchtimeout,
                        "INPUTS", (long long)m->ninputs, m->inputs, (size_t)m->ninputs, "OUTPUTS",
                        (long long)m->noutputs, m->outputs, (size_t)m->noutputs, "BLOB", m->chunks, (size_t)m->nchunks);
}

/* ------------------------------------------------------------------ load */
static int create(RedisModuleCtx *ctx, const char *name, RedisModuleCmdFunc f, const char *flags, int key) {
    return RedisModule_CreateCommand(ctx, name, f, flags, key, key, key);
}

int RedisModule_OnLoad(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    if (RedisModule_Init(ctx, "sstensor", 1, REDISMODULE_APIVER_1) != REDISMODULE_OK) return REDISMODULE_ERR;
    for (int i = 0; i + 1 < argc; i += 2) { /* RedisAI load options: honour MODEL_CHUNK_SIZE, ignore the rest */
        long long ll;
        if (!strcasecmp(RedisModule_StringPtrLen(argv[i], NULL), "MODEL_CHUNK_SIZE") &&
            RedisModule_StringToLongLong(argv[i + 1], &ll) == REDISMODULE_OK && ll > 0)
            ChunkSize = ll;
    }
    RedisModuleTypeMethods tm = {REDISMODULE_TYPE_METHOD_VERSION_1, tensor_load, tensor_save, tensor_rewrite, tensor_mem, NULL, tensor_free};
    RedisModuleTypeMethods mm = {REDISMODULE_TYPE_METHOD_VERSION_1, model_load, model_save, model_rewrite, model_mem, NULL, model_free};
    if (!(TensorType = RedisModule_CreateDataType(ctx, "sstensorT", 0, &tm))) return REDISMODULE_ERR;
    if (!(ModelType = RedisModule_CreateDataType(ctx, "sstensorM", 0, &mm))) return REDISMODULE_ERR;
    if (create(ctx, "ai.tensorset", TensorSet, "write deny-oom", 1) || create(ctx, "ai.tensorget", TensorGet, "readonly", 1) ||
        create(ctx, "ai.modelstore", ModelStore, "write deny-oom", 1) || create(ctx, "ai.modelget", ModelGet, "readonly", 1) ||
        create(ctx, "ai.modeldel", ModelDel, "write", 1) || create(ctx, "ai.config", Config, "write", 0))
        return REDISMODULE_ERR;
    static const char *runtime[] = {"ai.modelexecute", "ai.modelrun",   "ai.modelset",     "ai.scriptset",
                                    "ai.scriptstore",  "ai.scriptget",  "ai.scriptdel",    "ai.scriptrun",
                                    "ai.scriptexecute", "ai.dagrun",    "ai.dagrun_ro",    "ai.dagexecute",
                                    "ai.dagexecute_ro", "ai.info",      "ai._modelscan",   "ai._scriptscan"};
    for (size_t i = 0; i < sizeof(runtime) / sizeof(*runtime); i++)
        if (create(ctx, runtime[i], NoRuntime, "readonly", 0)) return REDISMODULE_ERR;
    return REDISMODULE_OK;
}
