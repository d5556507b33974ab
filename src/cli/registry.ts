/**
 * `peft registry`: push / list / show / diff / tag / rollback / gc / promote over a registry
 * directory (src/lifecycle/registry.ts; --registry DIR, else PEFT_REGISTRY, else
 * ~/.cache/peft-ts/registry). `promote` runs the gate (src/lifecycle/gate.ts) and exits 1 with the
 * report when it fails.
 */
import { Command } from 'commander';
import { loadTokenizer } from '../io/tokenizer.js';
import { runGate, type GateReport } from '../lifecycle/gate.js';
import { checkBase } from '../lifecycle/provenance.js';
import {
  checkout, diff, gc, listNames, listVersions, readManifest, readTags, registryRoot, resolveRef, rollback, saveReport, setTag, show, push,
} from '../lifecycle/registry.js';
import { adapterBase, openModel } from './model.js';
import { int } from './options.js';

const out = (s: string): void => { process.stdout.write(s + '\n'); };
const json = (v: unknown): void => out(JSON.stringify(v, null, 2));

function sub(name: string, description: string): Command {
  return new Command(name).description(description).option('--registry <dir>', 'registry directory (default: $PEFT_REGISTRY, else ~/.cache/peft-ts/registry)');
}

const fmt = (v: unknown): string => (typeof v === 'number' ? Number(v.toPrecision(6)).toString() : JSON.stringify(v));

export function printGateReport(r: GateReport): void {
  for (const c of r.checks) out(`${c.passed ? 'pass' : 'FAIL'} ${c.name}: ${c.detail}`);
}

export function registryCommand(): Command {
  const cmd = new Command('registry').description('versioned adapter registry: push, list, show, diff, tag, promote (with a gate), rollback, gc');

  cmd.addCommand(sub('push', 'store an adapter directory as the next immutable version NAME@N')
    .argument('<name>', 'adapter name').argument('<dir>', 'adapter directory')
    .option('--message <text>', 'a note kept in the manifest')
    .option('--json', 'print the manifest')
    .action((name: string, dir: string, o: { registry?: string; message?: string; json?: boolean }) => {
      const m = push(registryRoot(o.registry), name, dir, { message: o.message });
      if (o.json) json(m);
      else out(`pushed ${m.name}@${m.version} (${Object.keys(m.files).length} files, digest ${m.digest.slice(0, 12)})`);
    }));

  cmd.addCommand(sub('list', 'adapters, their versions and tags')
    .option('--json', 'print as JSON')
    .action((o: { registry?: string; json?: boolean }) => {
      const root = registryRoot(o.registry);
      const rows = listNames(root).map((name) => ({ name, versions: listVersions(root, name), tags: readTags(root, name).tags }));
      if (o.json) return json(rows);
      if (!rows.length) return out(`(empty registry ${root})`);
      for (const r of rows) out(`${r.name}: versions ${r.versions.join(', ')}${Object.keys(r.tags).length ? `; tags ${Object.entries(r.tags).map(([t, v]) => `${t}→${v}`).join(', ')}` : ''}`);
    }));

  cmd.addCommand(sub('show', 'a version\'s manifest, tags and gate reports (NAME = its prod tag, else the latest)')
    .argument('<ref>', 'NAME, NAME@N or NAME@TAG')
    .option('--json', 'print as JSON')
    .action((ref: string, o: { registry?: string; json?: boolean }) => {
      const s = show(registryRoot(o.registry), ref);
      if (o.json) return json(s);
      const m = s.manifest;
      out(`${m.name}@${m.version}${s.tags.length ? ` [${s.tags.join(', ')}]` : ''}  ${m.peft_type} on ${m.base_model ?? '?'}  pushed ${m.created} from ${m.source}`);
      if (m.message) out(`message: ${m.message}`);
      out(`digest ${m.digest}${m.base_sha256 ? `, base sha256 ${m.base_sha256.slice(0, 12)}…` : ''}`);
      for (const [f, e] of Object.entries(m.files)) out(`  ${f}  ${e.bytes} B  ${e.sha256.slice(0, 12)}`);
      for (const [k, v] of Object.entries(m.metrics)) out(`  metric ${k} = ${fmt(v)}`);
      for (const r of s.reports) out(`  gate report ${r.file}: ${r.passed ? 'passed' : 'failed'}`);
    }));

  cmd.addCommand(sub('diff', 'config, metric and file differences between two versions')
    .argument('<a>', 'NAME@N').argument('<b>', 'NAME@M')
    .option('--json', 'print as JSON')
    .action((a: string, b: string, o: { registry?: string; json?: boolean }) => {
      const d = diff(registryRoot(o.registry), a, b);
      if (o.json) return json(d);
      out(`${d.a} → ${d.b}${d.sameBase ? '' : ' (DIFFERENT base model)'}`);
      for (const [title, rows] of [['config', d.config], ['metrics', d.metrics], ['files', d.files]] as const) {
        if (!rows.length) { out(`${title}: same`); continue; }
        out(`${title}:`);
        for (const r of rows) out(`  ${r.key}: ${fmt(r.a)} → ${fmt(r.b)}${r.delta !== undefined ? ` (${r.delta >= 0 ? '+' : ''}${fmt(r.delta)})` : ''}`);
      }
    }));

  cmd.addCommand(sub('tag', 'point a tag at a version (no gate; see promote)')
    .argument('<ref>', 'NAME@N').argument('<tag>', 'tag name, e.g. prod')
    .action((ref: string, tag: string, o: { registry?: string }) => {
      const r = setTag(registryRoot(o.registry), ref, tag);
      out(`${ref.split('@')[0]}@${tag}: ${r.from ?? '(none)'} → ${r.to}`);
    }));

  cmd.addCommand(sub('rollback', 'move a tag back to the version it pointed to before')
    .argument('<name>', 'adapter name')
    .option('--tag <tag>', 'tag to move back', 'prod')
    .action((name: string, o: { registry?: string; tag: string }) => {
      const r = rollback(registryRoot(o.registry), name, o.tag);
      out(`${name}@${o.tag}: ${r.from} → ${r.to} (rolled back)`);
    }));

  cmd.addCommand(sub('gc', 'remove unreferenced blobs, stale checkouts and temp files (and, with --keep-last, old untagged versions)')
    .option('--keep-last <n>', 'also delete versions that are untagged, not in a rollback stack and older than the last N', int('--keep-last', 1))
    .option('--dry-run', 'report only')
    .action((o: { registry?: string; keepLast?: number; dryRun?: boolean }) => {
      const r = gc(registryRoot(o.registry), { keepLast: o.keepLast, dryRun: o.dryRun });
      out(`${o.dryRun ? 'would remove' : 'removed'} ${r.removedVersions.length} versions${r.removedVersions.length ? ` (${r.removedVersions.join(', ')})` : ''}, ${r.removedBlobs} blobs (${r.freedBytes} bytes), ${r.removedTemp} temp files`);
    }));

  cmd.addCommand(sub('promote', 'evaluate a version against a gate file and move the tag only if it passes (the report is kept with the version)')
    .argument('<ref>', 'NAME@N')
    .requiredOption('--gate <file>', 'gate file (YAML/JSON: target, forgetting, exact_match thresholds)')
    .option('--to <tag>', 'tag to move', 'prod')
    .option('--model <dir>', 'base model directory (default: from the adapter, else the bundled stories260K)')
    .option('--allow-base-mismatch', 'evaluate even if the adapter was trained on another base')
    .option('--json', 'print the report as JSON')
    .action((ref: string, o: { registry?: string; gate: string; to: string; model?: string; allowBaseMismatch?: boolean; json?: boolean }) => {
      const root = registryRoot(o.registry);
      const { name, version } = resolveRef(root, ref);
      readManifest(root, name, version);
      const dir = checkout(root, name, version);
      const base = adapterBase(dir, o.model);
      checkBase(dir, base.dir, o.allowBaseMismatch);
      const model = openModel(base.dir, base.quantize);
      const report = runGate(model, loadTokenizer(base.dir), dir, o.gate, `${name}@${version}`);
      const file = saveReport(root, name, version, 'gate', report);
      if (o.json) json({ ...report, report_file: file });
      else printGateReport(report);
      if (report.passed) {
        const r = setTag(root, `${name}@${version}`, o.to, 'promote', file);
        if (!o.json) out(`promoted ${name}@${version} to ${o.to} (was ${r.from ?? 'unset'}); report ${file}`);
      } else {
        if (!o.json) out(`refused: ${name}@${version} failed the gate; ${o.to} stays ${readTags(root, name).tags[o.to] ?? 'unset'}; report ${file}`);
        process.exitCode = 1;
      }
    }));
  return cmd;
}
