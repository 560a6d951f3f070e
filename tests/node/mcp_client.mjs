// mcp_client.mjs -- a reference MCP client built with the official TypeScript
// SDK (Client + StdioClientTransport / StreamableHTTPClientTransport), for
// Sibyl's interoperability tests.
//
//   node mcp_client.mjs stdio <command> [args...]   spawn the server, talk over its stdin/stdout
//   node mcp_client.mjs http <url>                   Streamable HTTP (e.g. http://127.0.0.1:PORT/mcp)
//
// It connects (initialize handshake), then: listTools; callTool add {a:2,b:3};
// callTool fail if listed; listResources + readResource of the first one;
// listPrompts + getPrompt of the first one (required arguments set to "x").
// It prints ONE JSON line on stdout:
//   {ok, protocolVersion, serverInfo, serverCapabilities, instructions,
//    tools, add, fail, resources, resource, prompts, prompt}
// and exits 0; on any failure it prints {"error": {message, code, data}} and
// exits 1. The whole run is limited to MCP_CLIENT_TIMEOUT_MS (default 20000) ms.
// The spawned server's stderr is passed through to ours; its environment is
// ours (not the SDK's reduced default), so SIBYL_* / LUA_PATH reach it.
// Run the copy placed below node_modules: node.script("mcp_client.mjs") in
// tests/fixtures/node.lua (ESM imports ignore NODE_PATH).

import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const TIMEOUT_MS = Number(process.env.MCP_CLIENT_TIMEOUT_MS || 20000);

function emit(obj) {
    process.stdout.write(JSON.stringify(obj) + "\n");
}

function fail(e) {
    emit({ error: { message: String(e?.message ?? e), code: e?.code, data: e?.data } });
    process.exit(1);
}

const timer = setTimeout(() => fail(new Error(`timed out after ${TIMEOUT_MS} ms`)), TIMEOUT_MS);

async function main() {
    const [mode, target, ...rest] = process.argv.slice(2);
    let transport;
    if (mode === "stdio" && target) {
        transport = new StdioClientTransport({
            command: target,
            args: rest,
            env: { ...process.env },
            stderr: "inherit",
        });
    } else if (mode === "http" && target) {
        transport = new StreamableHTTPClientTransport(new URL(target));
    } else {
        throw new Error("usage: mcp_client.mjs <stdio|http> <command-or-url> [args...]");
    }

    // The Client tells the transport the negotiated version (HTTP uses it for
    // the MCP-Protocol-Version header); stdio has no such hook, so add one.
    let negotiated;
    const setVersion = transport.setProtocolVersion?.bind(transport);
    transport.setProtocolVersion = (v) => { negotiated = v; setVersion?.(v); };

    const client = new Client({ name: "sibyl-node-client", version: "1.0.0" });
    await client.connect(transport);

    const out = {
        ok: true,
        mode,
        protocolVersion: transport.protocolVersion ?? negotiated,
        serverInfo: client.getServerVersion(),
        serverCapabilities: client.getServerCapabilities(),
        instructions: client.getInstructions(),
        sessionId: transport.sessionId,
    };

    const caps = out.serverCapabilities || {};
    if (caps.tools) {
        out.tools = (await client.listTools()).tools;
        const names = out.tools.map((t) => t.name);
        if (names.includes("add")) out.add = await client.callTool({ name: "add", arguments: { a: 2, b: 3 } });
        if (names.includes("fail")) out.fail = await client.callTool({ name: "fail", arguments: {} });
    }
    if (caps.resources) {
        out.resources = (await client.listResources()).resources;
        if (out.resources.length > 0) out.resource = await client.readResource({ uri: out.resources[0].uri });
    }
    if (caps.prompts) {
        out.prompts = (await client.listPrompts()).prompts;
        if (out.prompts.length > 0) {
            const p = out.prompts[0];
            const args = {};
            for (const a of p.arguments || []) if (a.required) args[a.name] = "x";
            out.prompt = await client.getPrompt({ name: p.name, arguments: args });
        }
    }

    if (mode === "http") await transport.terminateSession().catch(() => {});
    await client.close();
    clearTimeout(timer);
    emit(out);
    process.exit(0);
}

main().catch(fail);
