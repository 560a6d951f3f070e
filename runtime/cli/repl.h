/* repl.h -- the interactive prompt of the `sibyl` command (repl.c). */
#ifndef SB_REPL_H
#define SB_REPL_H

#include "sb.h"

/* Run the REPL on the terminal until Ctrl-D; each line runs as a task while
 * the event loop keeps serving other tasks. Returns SIBYL_OK. */
int sb_repl(sibyl_rt *rt);

#endif
