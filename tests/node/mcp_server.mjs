// mcp_server.mjs -- a reference MCP server built with the official TypeScript
// SDK's high-level McpServer API, for Sibyl's interoperability tests.
//
//   node mcp_server.mjs               stdio transport (JSON-RPC lines on stdin/stdout)
//   node mcp_server.mjs --http PORT   Streamable HTTP on http://127.0.0.1:PORT/mcp,
//                                     stateful sessions (Mcp-Session-Id); PORT 0 picks
//                                     a free port. Prints "listening <port>" on stdout
//                                     once ready, then nothing else on stdout.
//
// It exposes:
//   tool   add   {a: number, b: number} -> text "<a+b>", structuredContent {sum}
//   tool   echo  {text: string}         -> text
//   tool   fail  {}                     -> isError: true, text "boom"
//   tool   slow  {ms: number}           -> sleeps ms (progress notifications every
//                                         ~50 ms when the client sent a progressToken;
//                                         stops early, with an error, if cancelled)
//   resource mem://greeting             -> text "hello from node"
//   prompt   greet {name}               -> one user message "Say hello to <name>"
//
// Environment: MCP_SERVER_PARENT_PID=<pid> exits when that process is gone;
// MCP_SERVER_EXIT_ON_STDIN_EOF=1 (HTTP mode) exits when stdin closes, for
// parents that keep a pipe to it (sibyl.process).
//
// Logs go to stderr only (stdout belongs to the protocol in stdio mode).
// ESM imports resolve from the script's own folder upwards (not from cwd, not
// NODE_PATH), so run the copy that tests/fixtures/node.lua places below
// its node_modules (node.script("mcp_server.mjs")).

import { createServer } from "node:http";
import { randomUUID } from "node:crypto";
import { McpServer } from "@modelcontextprotocol/sdk/server/mcp.js";
import { StdioServerTransport } from "@modelcontextprotocol/sdk/server/stdio.js";
import { StreamableHTTPServerTransport } from "@modelcontextprotocol/sdk/server/streamableHttp.js";
import { isInitializeRequest } from "@modelcontextprotocol/sdk/types.js";
import * as z from "zod";

const log = (...a) => console.error("[mcp_server.mjs]", ...a);

// One McpServer per session: an McpServer (like the low-level Server) can be
// connected to one transport at a time.
function makeServer() {
    const server = new McpServer(
        { name: "sibyl-node-fixture", version: "1.0.0" },
        { instructions: "Test server for Sibyl's interop specs." },
    );

    server.registerTool("add", {
        description: "Add two numbers",
        inputSchema: { a: z.number(), b: z.number() },
        outputSchema: { sum: z.number() },
    }, async ({ a, b }) => ({
        content: [{ type: "text", text: String(a + b) }],
        structuredContent: { sum: a + b },
    }));

    server.registerTool("echo", {
        description: "Echo the text back",
        inputSchema: { text: z.string() },
    }, async ({ text }) => ({ content: [{ type: "text", text }] }));

    server.registerTool("fail", {
        description: "Always fails (a tool-level error, not a protocol error)",
    }, async () => ({ isError: true, content: [{ type: "text", text: "boom" }] }));

    server.registerTool("slow", {
        description: "Sleep ms milliseconds, reporting progress; honours cancellation",
        inputSchema: { ms: z.number() },
    }, async ({ ms }, extra) => {
        const token = extra._meta?.progressToken;
        const t0 = Date.now();
        const step = 50;
        let n = 0;
        while (Date.now() - t0 < ms) {
            if (extra.signal.aborted) throw new Error("cancelled");
            await new Promise((resolve) => {
                const t = setTimeout(resolve, Math.min(step, Math.max(0, ms - (Date.now() - t0))));
                extra.signal.addEventListener("abort", () => { clearTimeout(t); resolve(); }, { once: true });
            });
            if (extra.signal.aborted) {
                log("slow: cancelled after", Date.now() - t0, "ms");
                throw new Error("cancelled");
            }
            n += 1;
            if (token !== undefined) {
                await extra.sendNotification({
                    method: "notifications/progress",
                    params: {
                        progressToken: token,
                        progress: Math.min(Date.now() - t0, ms),
                        total: ms,
                        message: `step ${n}`,
                    },
                });
            }
        }
        return { content: [{ type: "text", text: `slept ${ms} ms` }] };
    });

    server.registerResource("greeting", "mem://greeting", {
        description: "A greeting",
        mimeType: "text/plain",
    }, async (uri) => ({
        contents: [{ uri: uri.href, mimeType: "text/plain", text: "hello from node" }],
    }));

    server.registerPrompt("greet", {
        description: "Greet someone",
        argsSchema: { name: z.string() },
    }, ({ name }) => ({
        messages: [{ role: "user", content: { type: "text", text: `Say hello to ${name}` } }],
    }));

    return server;
}

async function runStdio() {
    const server = makeServer();
    const transport = new StdioServerTransport();
    transport.onclose = () => process.exit(0);
    process.stdin.on("end", () => process.exit(0));   // client went away
    await server.connect(transport);
    log("stdio ready");
}

async function runHttp(port) {
    const sessions = new Map();   // session id -> transport

    async function readJson(req) {
        const chunks = [];
        for await (const c of req) chunks.push(c);
        const text = Buffer.concat(chunks).toString("utf8");
        return text ? JSON.parse(text) : undefined;
    }

    function jsonRpcError(res, status, message) {
        res.writeHead(status, { "content-type": "application/json" });
        res.end(JSON.stringify({ jsonrpc: "2.0", error: { code: -32000, message }, id: null }));
    }

    const http = createServer(async (req, res) => {
        try {
            const url = new URL(req.url, "http://127.0.0.1");
            if (url.pathname !== "/mcp") {
                res.writeHead(404, { "content-type": "text/plain" });
                res.end("not found");
                return;
            }
            const sid = req.headers["mcp-session-id"];
            let body;
            if (req.method === "POST") {
                try { body = await readJson(req); }
                catch { return jsonRpcError(res, 400, "Parse error"); }
            }
            let transport = sid ? sessions.get(sid) : undefined;
            if (!transport) {
                if (sid) return jsonRpcError(res, 404, "Session not found");
                const init = req.method === "POST" &&
                    (Array.isArray(body) ? body.some(isInitializeRequest) : isInitializeRequest(body));
                if (!init) return jsonRpcError(res, 400, "Bad Request: no valid session id");
                transport = new StreamableHTTPServerTransport({
                    sessionIdGenerator: () => randomUUID(),
                    onsessioninitialized: (id) => { sessions.set(id, transport); log("session", id); },
                    onsessionclosed: (id) => { sessions.delete(id); log("session closed", id); },
                });
                transport.onclose = () => { if (transport.sessionId) sessions.delete(transport.sessionId); };
                await makeServer().connect(transport);
            }
            await transport.handleRequest(req, res, body);
        } catch (e) {
            log("request failed:", e?.stack || e);
            if (!res.headersSent) jsonRpcError(res, 500, "Internal error");
        }
    });

    http.listen(port, "127.0.0.1", () => {
        const actual = http.address().port;
        process.stdout.write(`listening ${actual}\n`);
        log(`http ready on http://127.0.0.1:${actual}/mcp`);
    });

    const stop = () => {
        for (const t of sessions.values()) t.close().catch(() => {});
        http.close();
        process.exit(0);
    };
    process.on("SIGTERM", stop);
    process.on("SIGINT", stop);
    // When started from a pipe, exit when the parent closes our stdin, so a
    // crashed test never leaves a server behind.
    if (process.env.MCP_SERVER_EXIT_ON_STDIN_EOF) {
        process.stdin.on("end", stop);
        process.stdin.resume();
    }
}

// Watchdog: with MCP_SERVER_PARENT_PID set (tests/fixtures/node.lua sets
// it to the test process), exit once that process is gone.
const parentPid = Number(process.env.MCP_SERVER_PARENT_PID || 0);
if (parentPid > 0) {
    setInterval(() => {
        try { process.kill(parentPid, 0); }
        catch (e) { if (e.code === "ESRCH") { log("parent", parentPid, "gone, exiting"); process.exit(0); } }
    }, 500).unref();
}

const argv = process.argv.slice(2);
const h = argv.indexOf("--http");
if (h >= 0) {
    const port = Number(argv[h + 1] ?? 0);
    if (!Number.isInteger(port) || port < 0 || port > 65535) {
        log("bad port:", argv[h + 1]);
        process.exit(2);
    }
    runHttp(port).catch((e) => { log(e?.stack || e); process.exit(1); });
} else {
    runStdio().catch((e) => { log(e?.stack || e); process.exit(1); });
}
