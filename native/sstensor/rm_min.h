/*
 * rm_min.h - the subset of the Redis module API (ABI version 1) that sstensor.c uses.
 *
 * Written for this project from the documented module ABI: Debian ships no redismodule.h.
 * A module never links against redis-server: at load time the server passes a context whose
 * first word is a pointer to RedisModule_GetApi, and the module looks every API function up
 * by name ("RedisModule_<Name>") through it. Only the functions declared here are resolved.
 */
#ifndef SSTENSOR_RM_MIN_H
#define SSTENSOR_RM_MIN_H

#include <stddef.h>
#include <stdint.h>

#define REDISMODULE_OK 0
#define REDISMODULE_ERR 1
#define REDISMODULE_APIVER_1 1

#define REDISMODULE_READ (1 << 0)
#define REDISMODULE_WRITE (1 << 1)

#define REDISMODULE_KEYTYPE_EMPTY 0

/* Only the version-1 fields of RedisModuleTypeMethods (the server reads no further for version 1). */
#define REDISMODULE_TYPE_METHOD_VERSION_1 1

#define REDISMODULE_ERRORMSG_WRONGTYPE "WRONGTYPE Operation against a key holding the wrong kind of value"

typedef struct RedisModuleCtx RedisModuleCtx;
typedef struct RedisModuleKey RedisModuleKey;
typedef struct RedisModuleString RedisModuleString;
typedef struct RedisModuleIO RedisModuleIO;
typedef struct RedisModuleType RedisModuleType;
typedef struct RedisModuleDigest RedisModuleDigest;

typedef int (*RedisModuleCmdFunc)(RedisModuleCtx *ctx, RedisModuleString **argv, int argc);
typedef void *(*RedisModuleTypeLoadFunc)(RedisModuleIO *rdb, int encver);
typedef void (*RedisModuleTypeSaveFunc)(RedisModuleIO *rdb, void *value);
typedef void (*RedisModuleTypeRewriteFunc)(RedisModuleIO *aof, RedisModuleString *key, void *value);
typedef size_t (*RedisModuleTypeMemUsageFunc)(const void *value);
typedef void (*RedisModuleTypeDigestFunc)(RedisModuleDigest *digest, void *value);
typedef void (*RedisModuleTypeFreeFunc)(void *value);

typedef struct RedisModuleTypeMethods {
    uint64_t version;
    RedisModuleTypeLoadFunc rdb_load;
    RedisModuleTypeSaveFunc rdb_save;
    RedisModuleTypeRewriteFunc aof_rewrite;
    RedisModuleTypeMemUsageFunc mem_usage;
    RedisModuleTypeDigestFunc digest;
    RedisModuleTypeFreeFunc free;
} RedisModuleTypeMethods;

/* X-macro: return type, name, parameters. One list drives the declarations and the lookups. */
#define SSRM_API(X)                                                                                              \
    X(void *, Alloc, (size_t bytes))                                                                             \
    X(void *, Calloc, (size_t nmemb, size_t size))                                                               \
    X(void, Free, (void *ptr))                                                                                   \
    X(int, CreateCommand, (RedisModuleCtx *, const char *, RedisModuleCmdFunc, const char *, int, int, int))   \
    X(void, SetModuleAttribs, (RedisModuleCtx *, const char *, int, int))                                       \
    X(int, IsModuleNameBusy, (const char *))                                                                     \
    X(int, WrongArity, (RedisModuleCtx *))                                                                       \
    X(int, ReplyWithLongLong, (RedisModuleCtx *, long long))                                                     \
    X(int, ReplyWithDouble, (RedisModuleCtx *, double))                                                          \
    X(int, ReplyWithError, (RedisModuleCtx *, const char *))                                                     \
    X(int, ReplyWithSimpleString, (RedisModuleCtx *, const char *))                                              \
    X(int, ReplyWithArray, (RedisModuleCtx *, long))                                                             \
    X(int, ReplyWithStringBuffer, (RedisModuleCtx *, const char *, size_t))                                      \
    X(int, ReplyWithString, (RedisModuleCtx *, RedisModuleString *))                                             \
    X(int, ReplyWithNull, (RedisModuleCtx *))                                                                    \
    X(void *, OpenKey, (RedisModuleCtx *, RedisModuleString *, int))                                             \
    X(void, CloseKey, (RedisModuleKey *))                                                                        \
    X(int, KeyType, (RedisModuleKey *))                                                                          \
    X(int, DeleteKey, (RedisModuleKey *))                                                                        \
    X(RedisModuleString *, CreateString, (RedisModuleCtx *, const char *, size_t))                               \
    X(RedisModuleString *, CreateStringFromLongLong, (RedisModuleCtx *, long long))                              \
    X(void, FreeString, (RedisModuleCtx *, RedisModuleString *))                                                 \
    X(void, RetainString, (RedisModuleCtx *, RedisModuleString *))                                               \
    X(const char *, StringPtrLen, (const RedisModuleString *, size_t *))                                         \
    X(int, StringToLongLong, (const RedisModuleString *, long long *))                                           \
    X(int, StringToDouble, (const RedisModuleString *, double *))                                                \
    X(int, ReplicateVerbatim, (RedisModuleCtx *))                                                                \
    X(RedisModuleType *, CreateDataType, (RedisModuleCtx *, const char *, int, RedisModuleTypeMethods *))        \
    X(int, ModuleTypeSetValue, (RedisModuleKey *, RedisModuleType *, void *))                                    \
    X(RedisModuleType *, ModuleTypeGetType, (RedisModuleKey *))                                                  \
    X(void *, ModuleTypeGetValue, (RedisModuleKey *))                                                            \
    X(void, SaveUnsigned, (RedisModuleIO *, uint64_t))                                                           \
    X(uint64_t, LoadUnsigned, (RedisModuleIO *))                                                                 \
    X(void, SaveSigned, (RedisModuleIO *, int64_t))                                                              \
    X(int64_t, LoadSigned, (RedisModuleIO *))                                                                    \
    X(void, SaveString, (RedisModuleIO *, RedisModuleString *))                                                  \
    X(RedisModuleString *, LoadString, (RedisModuleIO *))                                                        \
    X(void, SaveStringBuffer, (RedisModuleIO *, const char *, size_t))                                           \
    X(char *, LoadStringBuffer, (RedisModuleIO *, size_t *))                                                     \
    X(void, EmitAOF, (RedisModuleIO *, const char *, const char *, ...))                                         \
    X(void, Log, (RedisModuleCtx *, const char *, const char *, ...))

#define SSRM_DECLARE(ret, name, params) static ret(*RedisModule_##name) params = NULL;
SSRM_API(SSRM_DECLARE)
#undef SSRM_DECLARE

static int (*RedisModule_GetApi)(const char *, void *) = NULL;

/* Resolve every function of SSRM_API and register the module name (what redismodule.h's
 * RedisModule_Init does). Fails when the server lacks one of them. */
static int RedisModule_Init(RedisModuleCtx *ctx, const char *name, int ver, int apiver) {
    void *getapi = ((void **)ctx)[0];
    RedisModule_GetApi = (int (*)(const char *, void *))(uintptr_t)getapi;
#define SSRM_RESOLVE(ret, name, params)                                                                          \
    if (RedisModule_GetApi("RedisModule_" #name, (void *)&RedisModule_##name) != REDISMODULE_OK)                \
        return REDISMODULE_ERR;
    SSRM_API(SSRM_RESOLVE)
#undef SSRM_RESOLVE
    if (RedisModule_IsModuleNameBusy(name)) return REDISMODULE_ERR;
    RedisModule_SetModuleAttribs(ctx, name, ver, apiver);
    return REDISMODULE_OK;
}

#endif /* SSTENSOR_RM_MIN_H */
