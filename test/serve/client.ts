/** Shared client helpers for the serve tests: JSON posts, incrementally read SSE streams, test adapters. */
import { expect } from 'vitest';
import { join } from 'node:path';
import { loadModel } from '../../src/models/load.js';
import { LoraAdapter, parseLoraConfig, saveAdapter } from '../../src/peft/index.js';
import { STORIES } from '../helpers.js';

export type Json = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

/** Request helpers bound to a server base URL (read lazily, as servers start in beforeAll). */
export function client(base: () => string) {
  async function post(path: string, body: unknown): Promise<{ status: number; body: Json }> {
    const r = await fetch(base() + path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    return { status: r.status, body: await r.json() as Json };
  }

  /** A streaming request read incrementally. */
  async function openStream(path: string, body: Json, signal?: AbortSignal) {
    const r = await fetch(base() + path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ ...body, stream: true }), signal });
    expect(r.status).toBe(200);
    const reader = r.body!.getReader();
    const dec = new TextDecoder();
    let buf = '';
    const events: Array<Json | '[DONE]'> = [];
    const next = async (): Promise<Json | '[DONE]' | null> => {
      for (;;) {
        const i = buf.indexOf('\n\n');
        if (i >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          const d = block.replace(/^data: /, '');
          const e = d === '[DONE]' ? '[DONE]' : JSON.parse(d) as Json;
          events.push(e);
          return e;
        }
        const { value, done } = await reader.read();
        if (done) return null;
        buf += dec.decode(value, { stream: true });
      }
    };
    /** Reads to the end; returns the text and finish reason (throws on an error event). */
    const finish = async (): Promise<{ text: string; finish: string | null; events: number }> => {
      while ((await next()) !== null) { /* drain */ }
      let text = '', fin: string | null = null;
      for (const e of events) {
        if (e === '[DONE]') continue;
        if (e.error) throw new Error(`stream error: ${JSON.stringify(e.error)}`);
        const c = e.choices[0];
        if (!c) continue;
        text += c.text ?? c.delta?.content ?? '';
        fin = c.finish_reason ?? fin;
      }
      expect(events.at(-1)).toBe('[DONE]');
      return { text, finish: fin, events: events.length };
    };
    return { next, finish, events };
  }

  function newAdapter(dir: string, name: string, seed: number): string {
    const model = loadModel(STORIES);
    const d = join(dir, name);
    saveAdapter(new LoraAdapter(model, parseLoraConfig({ r: 4, lora_alpha: 8, target_modules: 'all-linear', init_lora_weights: false }), seed), d);
    return d;
  }
  return { post, openStream, newAdapter };
}
