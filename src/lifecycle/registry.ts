/**
 * A versioned adapter registry on a plain directory (default `~/.cache/peft-ts/registry`,
 * `PEFT_REGISTRY` overrides, `--registry DIR` on the command line):
 *
 * ```
 * <root>/blobs/sha256/<hex>                  every pushed file once, by content (read-only)
 * <root>/adapters/<NAME>/versions/<N>.json   immutable manifest of NAME@N: files → sha256, config, metrics
 * <root>/adapters/<NAME>/tags.json           tag → version, each tag's stack (for rollback) and the history
 * <root>/adapters/<NAME>/reports/<N>/*.json  promote-gate reports kept with the version
 * <root>/checkouts/<NAME>/<N>/               the version as an adapter directory (hard links to blobs)
 * <root>/.lock                               held by every writer (src/lifecycle/lock.ts)
 * ```
 *
 * Writes are atomic (temp + rename). A manifest is created with link(2), which fails when the
 * name exists, so two pushes can never produce the same NAME@N even without the lock; with it
 * (every writer holds it), `gc` never deletes a blob a push is writing.
 */
import { copyFileSync, existsSync, linkSync, mkdirSync, readdirSync, renameSync, rmSync, statSync, chmodSync } from 'node:fs';
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import { randomBytes } from 'node:crypto';
import { PeftError } from '../errors.js';
import { writeFileAtomic, writeJsonAtomic } from '../io/atomic.js';
import { sha256File, sha256Text } from './hash.js';
import { withLock } from './lock.js';
import { PROVENANCE_FILE, readProvenance, type Provenance } from './provenance.js';
import { readJsonObject } from '../io/files.js';

export const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;
export const TAG_RE = /^[A-Za-z][A-Za-z0-9_.-]{0,63}$/;

export interface FileEntry { sha256: string; bytes: number }
export interface Manifest {
  format: 'peft-ts-registry/1';
  name: string;
  version: number;
  created: string;
  /** Where it was pushed from (absolute path). */
  source: string;
  /** sha256 over the sorted `file:sha256` lines: equal digests mean identical adapters. */
  digest: string;
  files: Record<string, FileEntry>;
  peft_type: string;
  base_model: string | null;
  base_sha256: string | null;
  /** adapter_config.json as pushed. */
  config: Record<string, unknown>;
  /** The run's metrics from training_provenance.json (if any). */
  metrics: Record<string, number>;
  message?: string;
}

export interface TagsFile {
  tags: Record<string, number>;
  /** Per tag, the versions it pointed to, oldest first (the last is the current one). */
  stacks: Record<string, number[]>;
  history: Array<{ at: string; action: 'tag' | 'promote' | 'rollback' | 'untag'; tag: string; from: number | null; to: number | null; report?: string }>;
}

export function registryRoot(dir?: string): string {
  return resolve(dir ?? process.env.PEFT_REGISTRY ?? join(homedir(), '.cache', 'peft-ts', 'registry'));
}

/** Files of an adapter directory that are pushed: regular files at its top level (checkpoints and other subdirectories are left out). */
function adapterFiles(dir: string): string[] {
  if (!existsSync(join(dir, 'adapter_config.json'))) throw new PeftError('not an adapter directory: adapter_config.json not found', { file: dir });
  if (!existsSync(join(dir, 'adapter_model.safetensors'))) throw new PeftError('not an adapter directory: adapter_model.safetensors not found', { file: dir });
  return readdirSync(dir).filter((f) => !f.startsWith('.') && statSync(join(dir, f)).isFile()).sort();
}

export function parseRef(ref: string): { name: string; selector: string | null } {
  const at = ref.indexOf('@');
  const name = at < 0 ? ref : ref.slice(0, at);
  const selector = at < 0 ? null : ref.slice(at + 1);
  if (!NAME_RE.test(name)) throw new PeftError('invalid adapter name', { field: ref, expected: 'NAME or NAME@N or NAME@TAG; NAME of letters, digits, _ . - (≤ 128)', found: JSON.stringify(name) });
  if (selector !== null && !/^\d+$/.test(selector) && !TAG_RE.test(selector)) throw new PeftError('invalid version or tag', { field: ref, expected: 'NAME@N (a version number) or NAME@TAG', found: JSON.stringify(selector) });
  return { name, selector };
}

const paths = (root: string, name: string) => ({
  dir: join(root, 'adapters', name),
  versions: join(root, 'adapters', name, 'versions'),
  tags: join(root, 'adapters', name, 'tags.json'),
  reports: join(root, 'adapters', name, 'reports'),
});

function blobPath(root: string, sha: string): string {
  return join(root, 'blobs', 'sha256', sha);
}

function lockPath(root: string): string {
  mkdirSync(root, { recursive: true });
  return join(root, '.lock');
}

export function listNames(root: string): string[] {
  const d = join(root, 'adapters');
  return existsSync(d) ? readdirSync(d).filter((n) => NAME_RE.test(n) && existsSync(paths(root, n).versions)).sort() : [];
}

export function listVersions(root: string, name: string): number[] {
  const d = paths(root, name).versions;
  if (!existsSync(d)) return [];
  return readdirSync(d).map((f) => /^(\d+)\.json$/.exec(f)).filter((m): m is RegExpExecArray => m !== null).map((m) => Number(m[1])).sort((a, b) => a - b);
}

export function readManifest(root: string, name: string, version: number): Manifest {
  const f = join(paths(root, name).versions, `${version}.json`);
  if (!existsSync(f)) throw new PeftError('no such version in the registry', { file: root, field: `${name}@${version}`, expected: listVersions(root, name).map((v) => `${name}@${v}`).join(', ') || `a pushed version of ${name}` });
  return readJsonObject(f, { what: 'a registry manifest' }) as unknown as Manifest;
}

export function readTags(root: string, name: string): TagsFile {
  const f = paths(root, name).tags;
  if (!existsSync(f)) return { tags: {}, stacks: {}, history: [] };
  return readJsonObject(f, { what: 'a registry tags file' }) as unknown as TagsFile;
}

/** The version a reference names: NAME@N, NAME@TAG, or NAME (its `prod` tag, else the latest version). */
export function resolveRef(root: string, ref: string, defaultTag = 'prod'): { name: string; version: number } {
  const { name, selector } = parseRef(ref);
  const versions = listVersions(root, name);
  if (versions.length === 0) throw new PeftError('no such adapter in the registry', { file: root, field: name, expected: listNames(root).join(', ') || 'a pushed adapter' });
  if (selector !== null && /^\d+$/.test(selector)) {
    const v = Number(selector);
    if (!versions.includes(v)) readManifest(root, name, v); // throws naming the versions
    return { name, version: v };
  }
  const tags = readTags(root, name).tags;
  const tag = selector ?? defaultTag;
  if (tags[tag] !== undefined) return { name, version: tags[tag] };
  if (selector !== null) throw new PeftError('no such tag', { file: root, field: ref, expected: Object.keys(tags).map((t) => `${name}@${t}`).join(', ') || 'a tag set with `peft registry tag`' });
  return { name, version: versions[versions.length - 1] };
}

function manifestFor(dir: string, name: string, files: Record<string, FileEntry>, message?: string): Omit<Manifest, 'version' | 'created'> {
  const config = readJsonObject(join(dir, 'adapter_config.json'), { what: 'an adapter config' });
  let prov: Provenance | null = null;
  if (existsSync(join(dir, PROVENANCE_FILE))) prov = readProvenance(dir);
  const metrics: Record<string, number> = {};
  for (const [k, v] of Object.entries(prov?.metrics ?? {})) if (typeof v === 'number') metrics[k] = v;
  return {
    format: 'peft-ts-registry/1', name, source: resolve(dir),
    digest: sha256Text(Object.entries(files).map(([f, e]) => `${f}:${e.sha256}\n`).join('')),
    files, peft_type: String(config.peft_type), base_model: typeof config.base_model_name_or_path === 'string' ? config.base_model_name_or_path : null,
    base_sha256: prov?.base?.sha256 ?? null, config, metrics, ...(message ? { message } : {}),
  };
}

/**
 * Pushes an adapter directory as the next version NAME@N (immutable). Files go to the blob store
 * by content (stored once however many versions share them). Returns the manifest.
 */
export function push(root: string, name: string, dir: string, opts: { message?: string } = {}): Manifest {
  if (!NAME_RE.test(name)) throw new PeftError('invalid adapter name', { field: name, expected: 'letters, digits, _ . - (≤ 128, not starting with . _ -)' });
  const names = adapterFiles(dir);
  return withLock(lockPath(root), () => {
    const files: Record<string, FileEntry> = {};
    mkdirSync(join(root, 'blobs', 'sha256'), { recursive: true });
    for (const f of names) {
      const src = join(dir, f);
      const sha = sha256File(src);
      files[f] = { sha256: sha, bytes: statSync(src).size };
      const blob = blobPath(root, sha);
      if (!existsSync(blob)) {
        const tmp = `${blob}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
        copyFileSync(src, tmp);
        if (sha256File(tmp) !== sha) { rmSync(tmp, { force: true }); throw new PeftError('file changed while it was pushed', { file: src }); }
        chmodSync(tmp, 0o444);
        renameSync(tmp, blob);
      }
    }
    const p = paths(root, name);
    mkdirSync(p.versions, { recursive: true });
    const base = manifestFor(dir, name, files, opts.message);
    for (let attempt = 0; attempt < 1000; attempt++) {
      const versions = listVersions(root, name);
      const version = (versions[versions.length - 1] ?? 0) + 1;
      const m: Manifest = { ...base, version, created: new Date().toISOString() } as Manifest;
      const tmp = join(p.versions, `.${version}.json.tmp-${process.pid}-${randomBytes(4).toString('hex')}`);
      writeFileAtomic(tmp, JSON.stringify(m, null, 2) + '\n');
      try {
        linkSync(tmp, join(p.versions, `${version}.json`)); // fails if NAME@N exists: never overwrite a version
        return m;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      } finally {
        rmSync(tmp, { force: true });
      }
    }
    throw new PeftError('could not allocate a version number', { file: p.versions });
  });
}

/**
 * The directory of NAME@N as an adapter directory (hard links to the blobs, or copies across
 * filesystems), created on first use, atomically.
 */
export function checkout(root: string, name: string, version: number): string {
  const m = readManifest(root, name, version);
  const dir = join(root, 'checkouts', name, String(version));
  if (existsSync(dir)) return dir;
  mkdirSync(join(root, 'checkouts', name), { recursive: true });
  const tmp = `${dir}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  mkdirSync(tmp);
  for (const [f, e] of Object.entries(m.files)) {
    const blob = blobPath(root, e.sha256);
    if (!existsSync(blob)) throw new PeftError('registry blob missing (run `peft registry gc` only through the CLI)', { file: blob, field: `${name}@${version}/${f}` });
    try { linkSync(blob, join(tmp, f)); } catch { copyFileSync(blob, join(tmp, f)); }
  }
  try {
    renameSync(tmp, dir);
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true });
    if (!existsSync(dir)) throw e; // another process checked it out first: fine
  }
  return dir;
}

function writeTags(root: string, name: string, t: TagsFile): void {
  writeJsonAtomic(paths(root, name).tags, t);
}

/** Points TAG at NAME@N (recorded in the tag's stack and the history). */
export function setTag(root: string, ref: string, tag: string, action: 'tag' | 'promote' = 'tag', report?: string): { from: number | null; to: number } {
  if (!TAG_RE.test(tag)) throw new PeftError('invalid tag', { field: tag, expected: 'a letter, then letters, digits, _ . - (not a number)' });
  return withLock(lockPath(root), () => {
    const { name, version } = resolveRef(root, ref);
    const t = readTags(root, name);
    const from = t.tags[tag] ?? null;
    if (from === version) return { from, to: version }; // already there: nothing to record or roll back
    t.tags[tag] = version;
    (t.stacks[tag] ??= []).push(version);
    t.history.push({ at: new Date().toISOString(), action, tag, from, to: version, ...(report ? { report } : {}) });
    writeTags(root, name, t);
    return { from, to: version };
  });
}

/** Moves TAG back to the version it pointed to before its current one. Throws when there is none. */
export function rollback(root: string, name: string, tag = 'prod'): { from: number; to: number } {
  parseRef(name);
  return withLock(lockPath(root), () => {
    const t = readTags(root, name);
    const stack = t.stacks[tag] ?? [];
    if (t.tags[tag] === undefined || stack.length < 2)
      throw new PeftError('nothing to roll back to', { file: paths(root, name).tags, field: `${name}@${tag}`, expected: 'a tag moved at least twice', found: t.tags[tag] === undefined ? 'no such tag' : `only ever ${name}@${t.tags[tag]}` });
    const from = stack.pop()!;
    const to = stack[stack.length - 1];
    t.tags[tag] = to;
    t.history.push({ at: new Date().toISOString(), action: 'rollback', tag, from, to });
    writeTags(root, name, t);
    return { from, to };
  });
}

/** Keeps a gate report with its version; returns its path. */
export function saveReport(root: string, name: string, version: number, kind: string, report: unknown): string {
  return withLock(lockPath(root), () => {
    const d = join(paths(root, name).reports, String(version));
    mkdirSync(d, { recursive: true });
    const f = join(d, `${kind}-${new Date().toISOString().replace(/[:.]/g, '-')}-${randomBytes(2).toString('hex')}.json`);
    writeJsonAtomic(f, report);
    return f;
  });
}

export function listReports(root: string, name: string, version: number): string[] {
  const d = join(paths(root, name).reports, String(version));
  return existsSync(d) ? readdirSync(d).filter((f) => f.endsWith('.json')).sort().map((f) => join(d, f)) : [];
}

/** What `peft registry show` prints. */
export function show(root: string, ref: string): { manifest: Manifest; tags: string[]; reports: Array<{ file: string; passed: unknown; gate: unknown }> } {
  const { name, version } = resolveRef(root, ref);
  const manifest = readManifest(root, name, version);
  const tags = Object.entries(readTags(root, name).tags).filter(([, v]) => v === version).map(([k]) => k);
  const reports = listReports(root, name, version).map((file) => {
    const r = readJsonObject(file, { what: 'a gate report' }) as { passed?: unknown; gate?: unknown };
    return { file, passed: r.passed, gate: r.gate };
  });
  return { manifest, tags, reports };
}

export interface Delta { key: string; a: unknown; b: unknown; delta?: number }

/** Config keys, metrics and files that differ between two versions. */
export function diff(root: string, refA: string, refB: string): { a: string; b: string; config: Delta[]; metrics: Delta[]; files: Delta[]; sameBase: boolean } {
  const ra = resolveRef(root, refA), rb = resolveRef(root, refB);
  const a = readManifest(root, ra.name, ra.version), b = readManifest(root, rb.name, rb.version);
  const deltas = (x: Record<string, unknown>, y: Record<string, unknown>, numeric: boolean): Delta[] => {
    const out: Delta[] = [];
    for (const k of [...new Set([...Object.keys(x), ...Object.keys(y)])].sort()) {
      if (JSON.stringify(x[k]) === JSON.stringify(y[k])) continue;
      const d: Delta = { key: k, a: x[k] ?? null, b: y[k] ?? null };
      if (numeric && typeof x[k] === 'number' && typeof y[k] === 'number') d.delta = (y[k] as number) - (x[k] as number);
      out.push(d);
    }
    return out;
  };
  const files = deltas(Object.fromEntries(Object.entries(a.files).map(([f, e]) => [f, e.sha256.slice(0, 12)])), Object.fromEntries(Object.entries(b.files).map(([f, e]) => [f, e.sha256.slice(0, 12)])), false);
  return { a: `${a.name}@${a.version}`, b: `${b.name}@${b.version}`, config: deltas(a.config, b.config, true), metrics: deltas(a.metrics, b.metrics, true), files, sameBase: a.base_sha256 === b.base_sha256 };
}

/**
 * Removes blobs no manifest references, checkouts of versions that no longer exist, and temp
 * files left by interrupted writers. With `keepLast`, first deletes versions that are neither
 * tagged (now or in a tag's rollback stack) nor among the last `keepLast` of their name.
 */
export function gc(root: string, opts: { keepLast?: number; dryRun?: boolean } = {}): { removedVersions: string[]; removedBlobs: number; freedBytes: number; removedTemp: number } {
  return withLock(lockPath(root), () => {
    const removedVersions: string[] = [];
    let removedTemp = 0;
    const rm = (p: string): void => { if (!opts.dryRun) rmSync(p, { recursive: true, force: true }); };
    const referenced = new Set<string>();
    for (const name of listNames(root)) {
      const p = paths(root, name);
      for (const f of readdirSync(p.versions)) if (f.includes('.tmp-')) { rm(join(p.versions, f)); removedTemp++; }
      const versions = listVersions(root, name);
      const t = readTags(root, name);
      const pinned = new Set<number>([...Object.values(t.tags), ...Object.values(t.stacks).flat()]);
      for (const v of versions) {
        const keep = opts.keepLast === undefined || pinned.has(v) || versions.indexOf(v) >= versions.length - opts.keepLast;
        if (!keep) {
          rm(join(p.versions, `${v}.json`));
          rm(join(root, 'checkouts', name, String(v)));
          rm(join(p.reports, String(v)));
          removedVersions.push(`${name}@${v}`);
          continue;
        }
        for (const e of Object.values(readManifest(root, name, v).files)) referenced.add(e.sha256);
      }
      const co = join(root, 'checkouts', name);
      if (existsSync(co)) for (const d of readdirSync(co)) if (!/^\d+$/.test(d) || !versions.includes(Number(d)) || removedVersions.includes(`${name}@${d}`)) { rm(join(co, d)); if (d.includes('.tmp-')) removedTemp++; }
    }
    let removedBlobs = 0, freedBytes = 0;
    const bd = join(root, 'blobs', 'sha256');
    if (existsSync(bd)) {
      for (const f of readdirSync(bd)) {
        if (referenced.has(f)) continue;
        if (f.includes('.tmp-')) removedTemp++;
        else { removedBlobs++; freedBytes += statSync(join(bd, f)).size; }
        rm(join(bd, f));
      }
    }
    return { removedVersions, removedBlobs, freedBytes, removedTemp };
  });
}
