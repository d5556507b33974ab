/** PEFT methods and the multi-adapter model. */
export * from './config.js';
export { isTargeted, targetedLinears } from './inject.js';
export { LoraAdapter, loraDelta, peftKey, type LoraLayer } from './lora.js';
export { formatTrainableSummary, PeftModel, type Composition } from './peft-model.js';
export { loadAdapter, readAdapterTensors, registerAdapterLoader, saveAdapter } from './format.js';
export type { AdapterMethod, NamedTensor, RowRange } from './types.js';
