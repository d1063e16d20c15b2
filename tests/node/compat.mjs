// The official OpenAI Node SDK in its documented key order; prints one JSON object of results.
import fs from "node:fs";
import OpenAI, { toFile } from "openai";

const client = new OpenAI({ baseURL: process.env.MAIE_URL + "/v1", apiKey: process.env.MAIE_KEY, maxRetries: 0 });
const audio = process.env.MAIE_AUDIO;
const out = {};

async function run(name, fn) {
  try {
    out[name] = { ok: true, value: await fn() };
  } catch (e) {
    out[name] = { ok: false, status: e.status ?? null, message: String(e.message), code: e.code ?? null };
  }
}

for (const format of ["json", "text", "srt", "vtt", "verbose_json"]) {
  await run(format, () =>
    client.audio.transcriptions.create({
      model: "whisper-1",
      file: fs.createReadStream(audio),
      response_format: format,
      timestamp_granularities: format === "verbose_json" ? ["word", "segment"] : undefined,
      language: "en",
      prompt: "A speech.",
    }),
  );
}
await run("error", async () =>
  client.audio.transcriptions.create({
    model: "whisper-1",
    file: await toFile(Buffer.from("hello, not audio".repeat(50)), "notes.txt"),
    response_format: "srt",
    language: "en",
  }),
);
// Streaming in the order of OpenAI's speech-to-text guide (stream after the file in the form), with the
// json request's language and prompt, so the two texts can be compared.
await run("stream", async () => {
  const stream = await client.audio.transcriptions.create({
    file: fs.createReadStream(audio),
    model: "whisper-1",
    response_format: "text",
    stream: true,
    language: "en",
    prompt: "A speech.",
  });
  const events = [];
  for await (const event of stream) events.push(event);
  return events;
});
await run("models", async () => {
  const ids = [];
  for await (const m of client.models.list()) ids.push(m.id);
  return ids;
});
console.log(JSON.stringify(out));
