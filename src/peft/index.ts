/** PEFT methods and the multi-adapter model. */
export * from './config.js';
export { isTargeted, targetedLinears } from './inject.js';
export { LoraAdapter, loraDelta, peftKey, type LoraLayer } from './lora.js';
export { formatTrainableSummary, PeftModel, type Composition } from './peft-model.js';
export { loadAdapter, readAdapterTensors, saveAdapter } from './format.js';
export { adapterLoader, loadStateDict, registerAdapterLoader, type AdapterFiles, type AdapterLoader, type TensorMap } from './registry.js';
export { attachAdapters, sequenceSetup } from './attach.js';
export { dequantizeModel, mergeAdapter, type MergeResult } from './merge.js';
export type { AdapterMethod, NamedTensor, RowRange } from './types.js';
export {
  BOTTLENECK_ACTIVATIONS, BOTTLENECK_DEFAULTS, BottleneckAdapter, bottleneckKey, createBottleneckAdapter, loadBottleneckTensors,
  parseBottleneckConfig, type BottleneckActivation, type BottleneckConfig, type BottleneckModule, type BottleneckPlacement, type BottleneckSite,
} from './bottleneck.js';
export {
  combineLora, combineLoraDetailed, householderQR, jacobiSvd, LORA_COMBINATIONS, lowRankSvd,
  type CombinedModule, type CombineOptions, type CombineResult, type CombineSource, type LoraCombination,
} from './combine.js';
export { createIa3Adapter, Ia3Adapter, parseIa3Config, type Ia3Config, type Ia3Layer } from './ia3.js';
export { createPrefixAdapter, parsePrefixConfig, PrefixAdapter, type PrefixConfig } from './prefix.js';
export { createPromptAdapter, parsePromptConfig, PromptAdapter, textInitIds, type PromptConfig, type PromptTuningInit } from './prompt.js';
