/** Charts as standalone SVG, drawn with Vega-Lite (rendered in Node without a canvas). */
import * as vega from 'vega';
import { compile, type TopLevelSpec } from 'vega-lite';

async function render(spec: TopLevelSpec): Promise<string> {
  const view = new vega.View(vega.parse(compile(spec).spec), { renderer: 'none' });
  const svg = await view.toSVG();
  view.finalize();
  return svg;
}

/** Training (per step) and validation (per evaluation) loss against the optimizer step. */
export async function lossCurveSvg(points: Array<{ step: number; loss: number; split: string; series?: string }>, title = 'loss'): Promise<string> {
  const multi = points.some((p) => p.series);
  return render({
    $schema: 'https://vega.github.io/schema/vega-lite/v5.json',
    title,
    width: 560,
    height: 280,
    data: { values: points.map((p) => ({ ...p, series: p.series ? `${p.series} ${p.split}` : p.split })) },
    mark: { type: 'line', point: { size: 12 } },
    encoding: {
      x: { field: 'step', type: 'quantitative', title: 'optimizer step' },
      y: { field: 'loss', type: 'quantitative', title: 'loss (nats/token)', scale: { zero: false } },
      color: { field: 'series', type: 'nominal', title: multi ? 'run' : 'split' },
    },
  });
}

/** Grouped bars: one panel per metric, one bar per method. */
export async function barsSvg(rows: Array<{ method: string; metric: string; value: number }>, title: string): Promise<string> {
  return render({
    $schema: 'https://vega.github.io/schema/vega-lite/v5.json',
    title,
    data: { values: rows },
    facet: { column: { field: 'metric', type: 'nominal', title: null } },
    spec: {
      width: 140,
      height: 180,
      mark: 'bar',
      encoding: {
        x: { field: 'method', type: 'nominal', title: null, axis: { labelAngle: -40 } },
        y: { field: 'value', type: 'quantitative', title: null },
        color: { field: 'method', type: 'nominal', legend: null },
      },
    },
    resolve: { scale: { y: 'independent' } },
  });
}

/**
 * Several metrics against the optimizer step, one panel per metric (independent y scales), a line
 * per split: e.g. preference tuning's loss, `rewards/margins`, `rewards/accuracies`.
 */
export async function metricPanelsSvg(points: Array<{ step: number; value: number; metric: string; split: string }>, title: string, columns = 2): Promise<string> {
  return render({
    $schema: 'https://vega.github.io/schema/vega-lite/v5.json',
    title,
    data: { values: points },
    facet: { field: 'metric', type: 'nominal', title: null, sort: [...new Set(points.map((p) => p.metric))] },
    columns,
    spec: {
      width: 260,
      height: 160,
      mark: { type: 'line', point: { size: 10 } },
      encoding: {
        x: { field: 'step', type: 'quantitative', title: 'optimizer step' },
        y: { field: 'value', type: 'quantitative', title: null, scale: { zero: false } },
        color: { field: 'split', type: 'nominal', title: 'split' },
      },
    },
    resolve: { scale: { y: 'independent' } },
  });
}
