/** `peft train`: fine-tune with LoRA, QLoRA or full fine-tuning on a data file. */
import { Command, Option } from 'commander';
import { readTextFile } from '../io/files.js';
import { runTraining, METHODS, type MethodName, type TrainRunOptions } from '../train/run.js';
import { OBJECTIVES } from '../train/preference/losses.js';
import { float, int, list, requireOptions, withConfigFile } from './options.js';
import { trainingProgress } from './progress.js';

export function trainCommand(): Command {
  const cmd = new Command('train')
    .description('fine-tune a model on a data file (.txt, .jsonl text/alpaca/prompt-completion/chat, .json) and save the adapter')
    .option('--data <file>', 'training data file (required)')
    .option('--model <dir>', 'Hugging Face model directory (default: the bundled stories260K)')
    .option('--method <name>', `training method: ${METHODS.join(' | ')}`, 'lora')
    .option('--output <dir>', 'where the adapter, metrics.jsonl, loss_curve.svg and checkpoints go', 'out/adapter')
    .option('--r <n>', 'LoRA rank', int('--r', 1), 8)
    .option('--lora-alpha <a>', 'LoRA alpha (scaling = alpha / r)', float('--lora-alpha', 0), 16)
    .option('--lora-dropout <p>', 'dropout on the LoRA input while training', float('--lora-dropout', 0, 0.999), 0.05)
    .option('--target-modules <list>', 'comma-separated module names, a regex, or all-linear (LoRA default: all-linear; IA3 default: the model type\'s)')
    .option('--use-rslora', 'scale by alpha/sqrt(r) (rank-stabilised LoRA)')
    .option('--use-dora', 'DoRA: LoRA on the direction plus a trained magnitude per output row (lora/qlora)')
    .option('--modules-to-save <list>', 'modules trained in full and saved with the adapter (e.g. lm_head)', list)
    .option('--quant-type <type>', 'QLoRA base quantization: nf4 | fp4', 'nf4')
    .option('--feedforward-modules <list>', 'IA3: modules whose input is scaled (default: the model type\'s, e.g. down_proj)', list)
    .option('--num-virtual-tokens <n>', 'prefix/prompt tuning: virtual tokens', int('--num-virtual-tokens', 1), 16)
    .option('--no-prefix-projection', 'prefix tuning: train the prefixes directly instead of through the reparameterisation MLP (Li & Liang 2021; the MLP is the default here, as it trains stably, and is folded into plain prefixes when saved)')
    .option('--encoder-hidden-size <n>', 'prefix tuning: hidden width of the reparameterisation MLP', int('--encoder-hidden-size', 1))
    .option('--prompt-tuning-init <mode>', 'prompt tuning: RANDOM | TEXT')
    .option('--prompt-tuning-init-text <text>', 'prompt tuning: text whose token embeddings initialise the prompt (implies TEXT)')
    .addOption(new Option('--loss-convention <c>', "prompt tuning: peft = HF PEFT's (labels = input_ids: the last virtual token also predicts each row's first token) | next-token (real tokens only)").choices(['peft', 'next-token']).default('peft'))
    .option('--reduction-factor <n>', 'bottleneck adapter: hidden / bottleneck', int('--reduction-factor', 1))
    .option('--bottleneck-size <n>', 'bottleneck adapter: explicit bottleneck width', int('--bottleneck-size', 1))
    .option('--placement <p>', 'bottleneck adapter: houlsby (after attention and MLP) | pfeiffer (after MLP)')
    .option('--non-linearity <f>', 'bottleneck adapter: relu | gelu | gelu_tanh | silu')
    .option('--compute-dtype <dtype>', 'float32 | bf16: bf16 multiplies the frozen base weights in bfloat16 on AMX tiles or with VDPBF16PS (activations rounded to bf16, float32 sums; LoRA/adapters and the optimizer stay float32), like torch.autocast("cpu", dtype=torch.bfloat16); needs AMX-BF16 or AVX512_BF16, refused otherwise', 'float32')
    .option('--gradient-checkpointing', 'recompute each decoder block in backward instead of keeping its activations: less memory, about one more forward pass per step')
    .option('--max-steps <n>', 'optimizer steps', int('--max-steps', 1), 200)
    .option('--batch-size <n>', 'rows per micro-batch', int('--batch-size', 1), 8)
    .option('--grad-accum <n>', 'micro-batches per optimizer step', int('--grad-accum', 1), 1)
    .option('--max-seq-length <n>', 'tokens per row', int('--max-seq-length', 2), 256)
    .option('--no-pack', 'one example per row (padded) instead of packing short examples')
    .option('--text-split <mode>', '.txt files: blocks | paragraphs', 'blocks')
    .option('--lr <x>', 'peak learning rate (default per method: lora/qlora/full/adapter 1e-3, ia3/prefix 1e-2, prompt 3e-2)', float('--lr', 0))
    .option('--schedule <name>', 'constant | linear | cosine', 'cosine')
    .option('--warmup-steps <n>', 'linear warmup steps', int('--warmup-steps'), 10)
    .option('--weight-decay <x>', 'AdamW weight decay', float('--weight-decay', 0), 0)
    .option('--max-grad-norm <x>', 'global gradient-norm clip (0 = off)', float('--max-grad-norm', 0), 1)
    .option('--seed <s>', 'seed (initialisation, data order, dropout)', int('--seed'), 0)
    .option('--val-data <file>', 'validation file (default: 5% of the training data)')
    .option('--val-fraction <f>', 'fraction of the data held out for validation', float('--val-fraction', 0, 0.9))
    .option('--eval-every <n>', 'evaluate every N steps (0 = start and end only)', int('--eval-every'), 50)
    .option('--max-eval-examples <n>', 'score at most N validation examples per evaluation (0 = all)', int('--max-eval-examples'), 0)
    .option('--checkpoint-every <n>', 'checkpoint every N steps (0 = none)', int('--checkpoint-every'), 0)
    .option('--save-total-limit <n>', 'keep only the N newest checkpoints (0 = all), as transformers\' save_total_limit', int('--save-total-limit'), 0)
    .option('--resume <dir>', 'resume from a checkpoint (or the output directory holding checkpoint-N)')
    .option('--skip-bad-lines', 'skip malformed data lines (reporting the count) instead of stopping')
    .option('--chat-template <file>', 'Jinja chat template for {"messages"} data (default: the tokenizer\'s, else a ChatML-style one, as peft serve uses)')
    .option('--forgetting-data <file>', 'text of the base model\'s own domain: perplexity before and after measures forgetting')
    .option('--max-forgetting-examples <n>', 'score at most N forgetting examples (0 = all)', int('--max-forgetting-examples'), 0)
    .option('--result-json <file>', 'write a JSON summary of the run (metrics, perplexities, memory, time)')
    .option('--adapter <dir>', 'continue training this existing adapter (e.g. an SFT adapter) instead of a new one; with dpo/ipo/kto it is also the frozen reference')
    .option('--objective <name>', `training objective: sft | ${OBJECTIVES.join(' | ')} (preference objectives read {"prompt","chosen","rejected"} data; kto reads {"prompt","completion","label"})`, 'sft')
    .option('--beta <x>', 'preference objectives: β (default 0.1; simpo 2.0)', float('--beta', 0))
    .option('--label-smoothing <x>', 'dpo/simpo: probability that a preference is flipped (conservative DPO)', float('--label-smoothing', 0, 0.4999))
    .option('--simpo-gamma <x>', 'simpo: target reward margin γ (default 0.5)', float('--simpo-gamma'))
    .option('--cpo-alpha <x>', 'simpo: weight of the NLL term on chosen completions (default 0)', float('--cpo-alpha', 0))
    .option('--desirable-weight <x>', 'kto: weight of desirable examples (default 1)', float('--desirable-weight', 0))
    .option('--undesirable-weight <x>', 'kto: weight of undesirable examples (default 1)', float('--undesirable-weight', 0))
    .option('--precompute-ref-logps', 'dpo/ipo: compute the reference log-probabilities once before training and cache them (always with --method full)')
    .option('--config <file>', 'JSON/YAML file with any of these options (flags override)');
  cmd.action(async (raw: Record<string, unknown>) => {
    const o = withConfigFile(cmd, raw) as Record<string, unknown>;
    requireOptions(o, ['data']);
    const targets = String(o.targetModules);
    const opts: TrainRunOptions = {
      data: o.data as string,
      model: o.model as string | undefined,
      method: o.method as MethodName,
      output: o.output as string,
      r: o.r as number,
      loraAlpha: o.loraAlpha as number,
      loraDropout: o.loraDropout as number,
      targetModules: o.targetModules === undefined ? undefined
        : targets === 'all-linear' || (!targets.includes(',') && /[\\^$*+?()[\]|]/.test(targets)) ? targets : list(targets),
      useRslora: Boolean(o.useRslora),
      useDora: Boolean(o.useDora),
      modulesToSave: o.modulesToSave as string[] | undefined,
      quantType: o.quantType as 'nf4' | 'fp4',
      feedforwardModules: o.feedforwardModules as string[] | undefined,
      numVirtualTokens: o.numVirtualTokens as number,
      prefixProjection: o.prefixProjection as boolean,
      encoderHiddenSize: o.encoderHiddenSize as number | undefined,
      promptTuningInit: o.promptTuningInit as 'RANDOM' | 'TEXT' | undefined,
      promptTuningInitText: o.promptTuningInitText as string | undefined,
      lossConvention: o.lossConvention as 'peft' | 'next-token',
      reductionFactor: o.reductionFactor as number | undefined,
      bottleneckSize: o.bottleneckSize as number | undefined,
      placement: o.placement as 'houlsby' | 'pfeiffer' | undefined,
      nonLinearity: o.nonLinearity as string | undefined,
      forgettingData: o.forgettingData as string | undefined,
      maxForgettingExamples: o.maxForgettingExamples as number,
      resultJson: o.resultJson as string | undefined,
      computeDtype: o.computeDtype as 'float32' | 'bf16',
      maxSteps: o.maxSteps as number,
      batchSize: o.batchSize as number,
      gradAccum: o.gradAccum as number,
      maxSeqLength: o.maxSeqLength as number,
      pack: o.pack as boolean,
      textSplit: o.textSplit as 'blocks' | 'paragraphs',
      lr: o.lr as number | undefined,
      schedule: o.schedule as 'constant' | 'linear' | 'cosine',
      warmupSteps: o.warmupSteps as number,
      weightDecay: o.weightDecay as number,
      maxGradNorm: o.maxGradNorm as number,
      seed: o.seed as number,
      valData: o.valData as string | undefined,
      valFraction: o.valFraction as number | undefined,
      evalEvery: o.evalEvery as number,
      maxEvalExamples: o.maxEvalExamples as number,
      checkpointEvery: o.checkpointEvery as number,
      saveTotalLimit: o.saveTotalLimit as number,
      resume: o.resume as string | undefined,
      skipBadLines: Boolean(o.skipBadLines),
      gradientCheckpointing: Boolean(o.gradientCheckpointing),
      chatTemplate: o.chatTemplate ? readTextFile(o.chatTemplate as string, { maxBytes: 4 * 2 ** 20, what: 'a Jinja chat template' }) : undefined,
      adapter: o.adapter as string | undefined,
      objective: o.objective as TrainRunOptions['objective'],
      beta: o.beta as number | undefined,
      labelSmoothing: o.labelSmoothing as number | undefined,
      simpoGamma: o.simpoGamma as number | undefined,
      cpoAlpha: o.cpoAlpha as number | undefined,
      desirableWeight: o.desirableWeight as number | undefined,
      undesirableWeight: o.undesirableWeight as number | undefined,
      precomputeRefLogps: Boolean(o.precomputeRefLogps),
    };
    const bar = trainingProgress();
    const r = await runTraining(opts, {
      onStart: (i) => {
        process.stdout.write(`${i.summary}\n`);
        if (i.quant) process.stdout.write(`base quantized: ${i.quant.quantType}, ${i.quant.bitsPerParam.toFixed(4)} bits/param, ${(i.quant.baseBytesTotal / 2 ** 20).toFixed(2)} MiB base weights\n`);
        process.stdout.write(`train examples: ${i.trainExamples}, validation examples: ${i.valExamples}\n`);
        bar.start(i.maxSteps, opts.method ?? 'lora');
      },
      onStep: (m) => bar.step(m),
      onEval: (step, loss) => bar.log(opts.objective && opts.objective !== 'sft'
        ? `step ${step}: validation ${opts.objective} loss ${loss.toFixed(4)}`
        : `step ${step}: validation loss ${loss.toFixed(4)}, perplexity ${Math.exp(loss).toFixed(3)}`),
      onCheckpoint: (dir) => bar.log(`checkpoint: ${dir}`),
      onNote: (message) => bar.log(`note: ${message}`),
    });
    bar.stop();
    const skipped = r.dataset.skippedBadLines;
    if (skipped > 0) process.stdout.write(`skipped ${skipped} malformed line(s)\n`);
    const last = r.result.steps[r.result.steps.length - 1];
    process.stdout.write(`done: ${r.result.state.step} steps, final train loss ${last ? last.loss.toFixed(4) : '-'}, ${Math.round(last?.tokensPerSecond ?? 0)} tokens/s, peak RSS ${(r.peakRss / 2 ** 20).toFixed(0)} MiB\n`);
    const pref = r.preference;
    if (pref) {
      process.stdout.write(`reference: ${pref.referenceDescription}\n`);
      const keys = ['loss', 'rewards/accuracies', 'rewards/margins', 'logps/accuracies'];
      if (pref.before && pref.after) for (const k of keys) if (k in pref.after) process.stdout.write(`held-out ${k}: ${(pref.before[k] ?? NaN).toFixed(4)} → ${pref.after[k].toFixed(4)}\n`);
    }
    if (r.forgetting) process.stdout.write(`forgetting: base-domain perplexity ${r.forgetting.before.perplexity.toFixed(3)} → ${r.forgetting.after.perplexity.toFixed(3)}\n`);
    if (r.outputDir) process.stdout.write(`saved to ${r.outputDir} (metrics.jsonl, loss_curve.svg)\n`);
  });
  return cmd;
}
