// Anthropic's JavaScript SDK (@anthropic-ai/sdk) against generate's Messages API:
// messages.create, then messages.stream (its text events and the final message).
// Usage: node anthropic.mjs <base URL> <model>   (ANTHROPIC_API_KEY: the key, any if auth is off)
// Prints one JSON object with what each call returned; tests/test_js_clients.py checks it.
import Anthropic from "@anthropic-ai/sdk";

const [baseURL, model] = process.argv.slice(2);
const client = new Anthropic({ baseURL, apiKey: process.env.ANTHROPIC_API_KEY ?? "unused",
                               maxRetries: 0, timeout: 120_000 });
const messages = [{ role: "user", content: "Say hello in three words." }];

const created = await client.messages.create({ model, max_tokens: 8, messages });

const stream = client.messages.stream({ model, max_tokens: 8, messages,
                                        system: "You are terse." });
const deltas = [];
stream.on("text", (text) => deltas.push(text));
const final = await stream.finalMessage();

let error = null;
try {
  await client.messages.create({ model, max_tokens: 0, messages });
} catch (err) {
  error = { name: err.constructor.name, status: err.status, type: err.error?.error?.type };
}

console.log(JSON.stringify({ created, streamed: { deltas, final }, error }));
