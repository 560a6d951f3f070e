// openai_chat.mjs -- the official `openai` Node client as a strict client of an
// OpenAI-compatible endpoint (Sibyl's, in the interop specs).
//
//   node openai_chat.mjs <baseURL> <apiKey> <model> [--expect-error]
//
// baseURL includes the version prefix, e.g. http://127.0.0.1:PORT/v1.
// Makes one non-streaming chat.completions.create and one streaming one
// (stream: true, stream_options: {include_usage: true}), both with
// messages [{role: "user", content: "What is Sibyl?"}], and prints ONE line:
//   {"nonstream": <the full response object>,
//    "stream": {"text": <concatenated deltas>, "chunks": n, "finish_reason", "usage", "id", "model"}}
// On an API error it prints {"error": {status, message, code, type}} and exits 1.
// With --expect-error the same error line is printed but the exit status is 0
// (and a call that succeeds instead exits 1 with {"unexpected_success": ...}).
// No retries; each request times out after OPENAI_TIMEOUT_MS (default 15000).
// Run the copy placed below node_modules: node.script("openai_chat.mjs") in
// tests/fixtures/node.lua (ESM imports ignore NODE_PATH).

import OpenAI from "openai";

const argv = process.argv.slice(2);
const expectError = argv.includes("--expect-error");
const [baseURL, apiKey, model] = argv.filter((a) => a !== "--expect-error");

function emit(obj) {
    process.stdout.write(JSON.stringify(obj) + "\n");
}

if (!baseURL || !apiKey || !model) {
    emit({ error: { message: "usage: openai_chat.mjs <baseURL> <apiKey> <model> [--expect-error]" } });
    process.exit(2);
}

const client = new OpenAI({
    baseURL,
    apiKey,
    maxRetries: 0,
    timeout: Number(process.env.OPENAI_TIMEOUT_MS || 15000),
});
const messages = [{ role: "user", content: "What is Sibyl?" }];

async function main() {
    const nonstream = await client.chat.completions.create({ model, messages });

    const stream = await client.chat.completions.create({
        model,
        messages,
        stream: true,
        stream_options: { include_usage: true },
    });
    const s = { text: "", chunks: 0, finish_reason: null, usage: null, id: null, model: null };
    for await (const chunk of stream) {
        s.chunks += 1;
        s.id ??= chunk.id;
        s.model ??= chunk.model;
        for (const choice of chunk.choices ?? []) {
            if (choice.delta?.content) s.text += choice.delta.content;
            if (choice.finish_reason) s.finish_reason = choice.finish_reason;
        }
        if (chunk.usage) s.usage = chunk.usage;
    }
    return { nonstream, stream: s };
}

try {
    const out = await main();
    if (expectError) {
        emit({ unexpected_success: out });
        process.exit(1);
    }
    emit(out);
    process.exit(0);
} catch (e) {
    const err = e instanceof OpenAI.APIError
        ? { status: e.status ?? null, message: e.message, code: e.code ?? null, type: e.type ?? null }
        : { status: null, message: String(e?.message ?? e), code: e?.code ?? null, type: e?.name ?? null };
    emit({ error: err });
    process.exit(expectError ? 0 : 1);
}
