/** A training progress bar (cli-progress) showing loss, tokens/s and ETA; silent when not a TTY unless forced. */
import cliProgress from 'cli-progress';
import type { StepMetrics } from '../train/trainer.js';

export interface Progress {
  start(total: number, label: string): void;
  step(m: StepMetrics): void;
  log(line: string): void;
  stop(): void;
}

/** A bar on stderr; in non-interactive output, one line every ~10% of the steps instead. */
export function trainingProgress(stream: NodeJS.WriteStream = process.stderr): Progress {
  const tty = Boolean(stream.isTTY);
  let bar: cliProgress.SingleBar | null = null;
  let total = 0;
  let label = '';
  return {
    start(t, l) {
      total = t;
      label = l;
      if (!tty) return;
      bar = new cliProgress.SingleBar({
        stream,
        format: `${l} [{bar}] {value}/{total} | loss {loss} | {tps} tok/s | ETA {eta_formatted}`,
        hideCursor: true,
        etaBuffer: 20,
      }, cliProgress.Presets.shades_classic);
      bar.start(t, 0, { loss: '-', tps: '-' });
    },
    step(m) {
      if (bar) {
        bar.update(m.step, { loss: m.loss.toFixed(4), tps: Math.round(m.tokensPerSecond) });
      } else if (m.step === total || m.step % Math.max(1, Math.round(total / 10)) === 0) {
        const eta = m.step > 0 ? (m.elapsed / m.step) * (total - m.step) : 0;
        stream.write(`${label} step ${m.step}/${total} loss ${m.loss.toFixed(4)} lr ${m.lr.toExponential(2)} ${Math.round(m.tokensPerSecond)} tok/s ETA ${eta.toFixed(0)}s\n`);
      }
    },
    log(line) {
      if (bar) bar.stop();
      stream.write(line + '\n');
      if (bar) {
        const b = bar as unknown as { value: number };
        bar.start(total, b.value ?? 0, { loss: '-', tps: '-' });
      }
    },
    stop() {
      bar?.stop();
      bar = null;
    },
  };
}
