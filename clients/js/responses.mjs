// The Vercel AI SDK's OpenAI provider (@ai-sdk/openai), whose default model speaks the
// Responses API, against generate's /v1/responses: generateText and streamText.
// Usage: node responses.mjs <base URL ending in /v1> <model>   (OPENAI_API_KEY: the key)
// Prints one JSON object with what each call returned; tests/test_js_clients.py checks it.
import { createOpenAI } from "@ai-sdk/openai";
import { generateText, streamText } from "ai";

const [baseURL, model] = process.argv.slice(2);
const openai = createOpenAI({ baseURL, apiKey: process.env.OPENAI_API_KEY ?? "unused" });
const prompt = "Say hello in three words.";
const settings = { model: openai.responses(model), prompt, maxOutputTokens: 8, maxRetries: 0 };

const generated = await generateText(settings);
const streamed = streamText(settings);
const deltas = [];
for await (const text of streamed.textStream) deltas.push(text);

console.log(JSON.stringify({
  generated: { text: generated.text, finishReason: generated.finishReason,
               usage: generated.usage },
  streamed: { deltas, text: await streamed.text, finishReason: await streamed.finishReason },
}));
