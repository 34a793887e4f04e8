#include "capstan_plugin.h"

/* The C target holds the public header; this function lets the host check which ABI it was built
 * with without hard-coding the macro in Swift. */
uint32_t capstan_host_abi_version(void) { return CAPSTAN_PLUGIN_ABI_VERSION; }
