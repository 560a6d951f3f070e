// mcp_bench.mjs -- the official TypeScript SDK's side of tests/bench/mcp.bench.sh:
// an SDK Client over stdio (StdioClientTransport) calls the tool `add` of the
// server it spawns, N times from C concurrent workers, and prints
// "node-sdk: <calls/s> calls/s".
//
//   node mcp_bench.mjs N C <command> [args...]

import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";

const [n, c, command, ...args] = process.argv.slice(2);
const N = Number(n), C = Number(c);
const transport = new StdioClientTransport({ command, args, env: { ...process.env }, stderr: "inherit" });
const client = new Client({ name: "bench", version: "1.0.0" });
await client.connect(transport);

let next = 0;
async function worker() {
    while (next < N) {
        next++;
        const r = await client.callTool({ name: "add", arguments: { a: 2, b: 3 } });
        if (r.isError) throw new Error("add failed");
    }
}
const t0 = performance.now();
await Promise.all(Array.from({ length: C }, worker));
const secs = (performance.now() - t0) / 1000;
console.log(`node-sdk: ${(N / secs).toFixed(0)} calls/s`);
await client.close();
process.exit(0);
