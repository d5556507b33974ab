/**
 * peft-ts public API: load a Hugging Face causal LM, attach PEFT adapters (LoRA, QLoRA, IA3,
 * prefix/prompt tuning, bottleneck adapters), train, evaluate, generate, merge and save in the
 * formats the ecosystem reads. See README.md for a walk-through.
 */
export { PeftError } from './errors.js';
export { native } from './native/index.js';
export * from './tensor/index.js';
export { ConfigReader, ropeInvFreq, type LayerPlan, type ModelConfig } from './models/config.js';
export { FAMILIES, familyOf, loadConfig, parseConfig, SUPPORTED_ARCHITECTURES } from './models/registry.js';
export { buildModel, loadModel, type LoadOptions } from './models/load.js';
export { saveModelDir } from './models/save.js';
export {
  defaultContext, forwardCached, forwardHidden, linearModules, lmLogits, lmLoss, namedParameters, setGradientCheckpointing,
  type Batch, type CausalLM, type ForwardContext, type LinearModule,
} from './models/model.js';
export { loadTokenizer, type Tokenizer } from './io/tokenizer.js';
export { readModelWeights, readSafetensorsFile, writeSafetensorsFile } from './io/safetensors.js';
export * from './peft/index.js';
export { loadModelQuantized, quantizationReport, quantizeModel, quantizeWeight } from './quant/quantize-model.js';
export { loadBnbCheckpoint, loadModelAuto, saveQuantizedCheckpoint } from './quant/bnb-checkpoint.js';
export { exportLoraAdapterGguf, exportLoraGguf } from './export/gguf-lora.js';
export { generate, generateBatch, type GenerateOptions, type GenerationResult } from './generate/generate.js';
export { KVCache } from './generate/kv-cache.js';
export { createLoader, evalBatches, loadDataset, type Dataset, type Example, type TrainBatch } from './train/data/index.js';
export { evaluate, type EvalResult } from './train/evaluate.js';
export { train, TRAIN_DEFAULTS, type TrainOptions, type TrainResult } from './train/trainer.js';
export { runTraining, setupMethod, DEFAULT_LR, METHODS, type MethodName, type TrainRunOptions } from './train/run.js';
export {
  defaultPreferenceConfig, dpoLoss, ipoLoss, ktoLoss, orpoLoss, simpoLoss, OBJECTIVES, type Objective, type PreferenceConfig,
} from './train/preference/losses.js';
export { loadPreferenceData, type PairExample, type PreferenceData, type UnpairedExample } from './train/preference/data.js';
export { ktoStep, pairStep, type PreferenceSetup, type ReferenceKind } from './train/preference/step.js';
export { evaluatePreference, type PreferenceRunResult } from './train/preference/run.js';
export { runCompare } from './report/compare.js';
export { runMainJob } from './report/main-job.js';
