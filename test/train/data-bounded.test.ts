/**
 * Issue 10: data preprocessing in linear time and bounded memory — a long conversation renders a
 * constant number of times (not once per prefix), and a huge record is cut before tokenizing while
 * giving exactly the tokens the whole record would have kept after truncation.
 */
import { describe, expect, it } from 'vitest';
import { loadTokenizer } from '../../src/io/tokenizer.js';
import { encodeRecord } from '../../src/train/data/index.js';
import { compileChatTemplate, DEFAULT_CHAT_TEMPLATE, PREFIX_RENDER_MAX_MESSAGES, renderChat } from '../../src/train/data/chat.js';
import { truncateExample } from '../../src/train/data/batching.js';
import type { ChatMessage, SourcedRecord } from '../../src/train/data/formats.js';
import { STORIES } from '../helpers.js';

const tok = loadTokenizer(STORIES);

function conversation(n: number): ChatMessage[] {
  return Array.from({ length: n }, (_, i) => ({ role: i % 2 === 0 ? 'user' : 'assistant', content: `message ${i}: the fox ran ${i} times around the tree.` }));
}

describe('chat preprocessing is linear in the number of messages', () => {
  it('a 2,000-message conversation renders a constant number of times; spans are the assistant turns with <|im_end|>', () => {
    const tpl = compileChatTemplate(DEFAULT_CHAT_TEMPLATE + ' ');
    let renders = 0;
    const render = tpl.template.render.bind(tpl.template);
    tpl.template.render = (items) => { renders++; return render(items); };
    const messages = conversation(2000);
    const r = renderChat(tpl, messages);
    expect(renders).toBeLessThanOrEqual(4);
    expect(r.spans).toHaveLength(1000);
    for (const [k, [a, b]] of r.spans.entries()) expect(r.text.slice(a, b)).toBe(`${messages[2 * k + 1].content}<|im_end|>`);
  });

  it('above the threshold the spans equal those of prefix rendering', () => {
    const tpl = compileChatTemplate(DEFAULT_CHAT_TEMPLATE);
    const short = conversation(PREFIX_RENDER_MAX_MESSAGES);
    const long = conversation(PREFIX_RENDER_MAX_MESSAGES + 2);
    const a = renderChat(tpl, short), b = renderChat(tpl, long);
    expect(b.spans.slice(0, a.spans.length)).toEqual(a.spans);
    expect(b.method).toBe(a.method);
  });
});

describe('a huge record is cut before tokenizing', () => {
  it('an 8 MiB prompt-completion record gives the same truncated example as the whole record', () => {
    const completion = 'and then the little fox ran home to its mother. '.repeat(8 * 2 ** 20 / 48);
    const rec = (c: string): SourcedRecord => ({ record: { format: 'prompt-completion', prompt: 'Tell me a story: ', completion: c }, file: 'mem.jsonl', line: 1, where: 'line 1' });
    const t0 = performance.now();
    const [big] = encodeRecord(rec(completion), tok, { maxSeqLength: 64 });
    expect(performance.now() - t0).toBeLessThan(3000);
    expect(big.ids.length).toBeLessThan(5000); // not the ~2M tokens of the whole record
    const [small] = encodeRecord(rec(completion.slice(0, 20_000)), tok, { maxSeqLength: 64 });
    const a = truncateExample(big, 64)!.example, b = truncateExample(small, 64)!.example;
    expect(Array.from(a.ids)).toEqual(Array.from(b.ids));
    expect(Array.from(a.targets)).toEqual(Array.from(b.targets));
  });
});
