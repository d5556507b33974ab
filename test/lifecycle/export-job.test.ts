/** peft export-job: the run's settings in TRL's and axolotl's terms (no Python needed; the run itself is test/interop). */
import { describe, expect, it } from 'vitest';
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { axolotlYaml, jobSpec, trlScript, writeJob } from '../../src/lifecycle/export-job.js';
import { ROOT, STORIES } from '../helpers.js';

describe('peft export-job', () => {
  it('TRL: the script carries the run (from train_args.json, flags override) and maps data and schedule', () => {
    const dir = mkdtempSync(join(tmpdir(), 'peft-job-'));
    const data = join(dir, 'pc.jsonl');
    writeFileSync(data, JSON.stringify({ prompt: 'Q: hi\nA:', completion: ' hello' }) + '\n');
    const run = join(dir, 'run');
    mkdirSync(run); // a peft train output directory: its train_args.json is what --from-run reads
    writeFileSync(join(run, 'train_args.json'), JSON.stringify({ data, r: 4, loraAlpha: 8, maxSteps: 30, schedule: 'constant', seed: 7, method: 'lora', output: 'x' }));
    const s = jobSpec({ fromRun: run, maxSteps: 12 });
    expect(s).toMatchObject({ data, r: 4, loraAlpha: 8, maxSteps: 12, schedule: 'constant', seed: 7, model: STORIES, lr: 1e-3, targetModules: 'all-linear' });
    const py = trlScript(s);
    const job = JSON.parse(/JOB = json\.loads\(r'''(.*)'''\)/.exec(py)![1]);
    expect(job).toMatchObject({ r: 4, loraAlpha: 8, maxSteps: 12, seed: 7, data_kind: 'prompt-completion', lr_scheduler_type: 'constant_with_warmup' });
    expect(py).toContain('completion_only_loss=None if text else True');
    expect(py).toContain('SFTTrainer(model=model, args=config');
    const w = writeJob(s, 'trl', join(dir, 'job'), 4);
    expect(w.command).toMatch(/^accelerate launch --multi_gpu --num_processes 4 .*train_trl\.py --output-dir /);
    expect(() => jobSpec({ data, method: 'prefix' })).toThrow(/--method: export-job writes LoRA and QLoRA runs/);
    expect(() => jobSpec({})).toThrow(/--data/);
  });

  it('axolotl: keys for the adapter, data type, masks and schedule', () => {
    const txt = join(ROOT, 'data', 'grimms_fairy_tales', 'grimms_fairy_tales_body.txt');
    const y = parseYaml(axolotlYaml(jobSpec({ data: txt, method: 'qlora', r: 16, targetModules: ['q_proj', 'v_proj'], useRslora: true }), '/o'));
    expect(y).toMatchObject({
      adapter: 'qlora', load_in_4bit: true, lora_r: 16, lora_alpha: 16, lora_target_modules: ['q_proj', 'v_proj'], peft_use_rslora: true,
      datasets: [{ path: txt, ds_type: 'text', type: 'completion' }], train_on_inputs: false, sequence_len: 256, micro_batch_size: 8,
      lr_scheduler: 'cosine', optimizer: 'adamw_torch', output_dir: '/o', base_model: STORIES,
    });
    const dir = mkdtempSync(join(tmpdir(), 'peft-job-'));
    const chat = join(dir, 'c.jsonl');
    writeFileSync(chat, JSON.stringify({ messages: [{ role: 'user', content: 'hi' }, { role: 'assistant', content: 'yo' }] }) + '\n');
    expect(parseYaml(axolotlYaml(jobSpec({ data: chat }))).datasets[0]).toMatchObject({ type: 'chat_template', field_messages: 'messages', roles_to_train: ['assistant'] });
    expect(readFileSync(writeJob(jobSpec({ data: chat }), 'axolotl', join(dir, 'j')).files[0], 'utf8')).toContain('lora_target_linear: true');
  });
});
