/* Error code table: one X-macro list (common.h) gives both the enum and the messages. */
#include "common/common.h"

const char *sg_strerror(int err)
{
    switch (err) {
    case SG_OK:
        return "ok";
#define SG__ERR_CASE(name, code, msg)                                                              \
    case code:                                                                                     \
        return msg;
        SG_ERRNO_MAP(SG__ERR_CASE)
#undef SG__ERR_CASE
    }
    return "unknown error";
}
