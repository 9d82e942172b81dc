/* A stand-in for Windows 10's bcryptprimitives.dll, which wine 8 lacks: Rust's standard
 * library takes its random bytes from ProcessPrng there. For running the Windows edge under
 * wine in tests only; never shipped (Windows has the real one). */
#include <windows.h>
#include <bcrypt.h>

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG n = len > 0x40000000 ? 0x40000000 : (ULONG)len;
        if (!BCRYPT_SUCCESS(BCryptGenRandom(NULL, data, n, BCRYPT_USE_SYSTEM_PREFERRED_RNG)))
            return FALSE;
        data += n;
        len -= n;
    }
    return TRUE;
}
