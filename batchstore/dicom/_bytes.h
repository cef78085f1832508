/* Little-endian integers read byte by byte (any alignment, any host), shared by the compiled modules. */
#ifndef BATCHSTORE_BYTES_H
#define BATCHSTORE_BYTES_H

#include <stdint.h>

static inline uint32_t
u16le(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8;
}

static inline uint32_t
u32le(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

#endif
