// Reading processes from /proc: resident memory, CPU ticks, the process tree (children of every
// thread, recursively) with zombies, and a sampler that records peak RSS of a process and of its
// tree while a phase runs. Linux only; every read tolerates the process having just gone.
import { readFileSync } from "node:fs";
import { childrenOf } from "../../src/supervisor/process-rss.ts";

/** Direct children of pid (of all its threads): the broker's own reading, which its RSS figures sum over. */
export { childrenOf };

const PAGE_KB = (() => {
  const out = Bun.spawnSync(["getconf", "PAGESIZE"]).stdout.toString().trim();
  return (Number(out) || 4096) / 1024;
})();

/** Clock ticks per second for utime/stime (getconf CLK_TCK; 100 on Linux). */
export const CLK_TCK = (() => {
  const out = Bun.spawnSync(["getconf", "CLK_TCK"]).stdout.toString().trim();
  return Number(out) || 100;
})();

function read(path: string): string | null {
  try {
    return readFileSync(path, "latin1");
  } catch {
    return null;
  }
}

/** Resident set size in KiB (statm's resident pages, the same figure as status's VmRSS), or 0 if gone. */
export function rssKb(pid: number): number {
  const statm = read(`/proc/${pid}/statm`);
  if (statm === null) return 0;
  const resident = Number(statm.split(" ")[1]);
  return Number.isFinite(resident) ? resident * PAGE_KB : 0;
}

/**
 * Proportional set size in KiB (smaps_rollup Pss): shared pages divided among the processes that
 * map them, so a sum over many copies of one program is not inflated by its shared text. Costs a
 * page-table walk: for one-off snapshots, not for the 50 ms sampler.
 */
export function pssKb(pid: number): number {
  const rollup = read(`/proc/${pid}/smaps_rollup`);
  const match = rollup === null ? null : /^Pss:\s+(\d+) kB/m.exec(rollup);
  return match === null ? 0 : Number(match[1]);
}

/** Sum of PSS over the roots and all their descendants, KiB. */
export function treePssKb(roots: number[]): number {
  let total = 0;
  for (const root of roots) {
    total += pssKb(root);
    for (const pid of descendantsOf(root)) total += pssKb(pid);
  }
  return total;
}

/** The kernel's own peak RSS of one process since it started (status VmHWM), in KiB. */
export function peakRssKb(pid: number): number {
  const status = read(`/proc/${pid}/status`);
  const match = status === null ? null : /VmHWM:\s+(\d+) kB/.exec(status);
  return match === null ? 0 : Number(match[1]);
}

export interface ProcStat {
  pid: number;
  state: string;
  ppid: number;
  /** utime + stime, in clock ticks. */
  cpuTicks: number;
  /** Start time in clock ticks since boot: with the pid, identifies a process across pid reuse. */
  startTime: number;
}

export function procStat(pid: number): ProcStat | null {
  const stat = read(`/proc/${pid}/stat`);
  if (stat === null) return null;
  // comm may hold spaces and parentheses: the fields start after the last ')'.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return { pid, state: fields[0]!, ppid: Number(fields[1]), cpuTicks: Number(fields[11]) + Number(fields[12]), startTime: Number(fields[19]) };
}

/** CPU seconds (user + system) the process itself has used so far; children not included. */
export function cpuSeconds(pid: number): number {
  const stat = procStat(pid);
  return stat === null ? NaN : stat.cpuTicks / CLK_TCK;
}

/** Every descendant of pid (not pid itself), zombies included, bounded against cycles. */
export function descendantsOf(pid: number, limit = 100_000): number[] {
  const found: number[] = [];
  const queue = [pid];
  const seen = new Set(queue);
  for (let i = 0; i < queue.length && found.length < limit; i++) {
    for (const child of childrenOf(queue[i]!)) {
      if (seen.has(child)) continue;
      seen.add(child);
      found.push(child);
      queue.push(child);
    }
  }
  return found;
}

/** How many of `pids` run the program named `comm` (/proc/<pid>/comm: bwrap's own processes, say). */
export function countByComm(pids: number[], comm: string): number {
  return pids.filter((pid) => read(`/proc/${pid}/comm`)?.trimEnd() === comm).length;
}

export interface Descendants {
  total: number;
  zombies: number;
  /** "pid state comm" of the first few, for the report. */
  examples: string[];
}

export function describeDescendants(pid: number): Descendants {
  const pids = descendantsOf(pid);
  let zombies = 0;
  const examples: string[] = [];
  for (const child of pids) {
    const stat = read(`/proc/${child}/stat`);
    if (stat === null) continue;
    const state = stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
    if (state === "Z") zombies++;
    if (examples.length < 5) examples.push(`${child} ${state} ${stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"))}`);
  }
  return { total: pids.length, zombies, examples };
}

export interface MemoryPeaks {
  /** Peak sampled RSS of the root processes alone (the gateway), KiB; null when there is no gateway. */
  rootKb: number | null;
  /** Peak sampled sum of RSS over the roots and all their descendants, KiB. */
  treeKb: number;
  samples: number;
}

/**
 * Samples RSS every `intervalMs` (re-listing the tree every `rescanMs`) of some root processes and
 * their descendants until stop(); peaks are of the sum at one instant, not sums of peaks.
 * `roots` is read at each rescan, so a target whose processes come and go (direct) can follow them.
 */
export class RssSampler {
  private rootPeak = 0;
  private treePeak = 0;
  private samples = 0;
  private tree: number[] = [];
  private lastScan = -Infinity;
  private readonly timer: ReturnType<typeof setInterval>;

  constructor(
    private readonly roots: () => number[],
    private readonly hasGateway: boolean,
    private readonly intervalMs = 50,
    private readonly rescanMs = 200,
  ) {
    this.sample();
    this.timer = setInterval(() => this.sample(), intervalMs);
  }

  sample(): void {
    const now = performance.now();
    const roots = this.roots();
    if (now - this.lastScan >= this.rescanMs) {
      this.tree = roots.flatMap((root) => descendantsOf(root));
      this.lastScan = now;
    }
    let rootKb = 0;
    for (const pid of roots) rootKb += rssKb(pid);
    let treeKb = rootKb;
    for (const pid of this.tree) treeKb += rssKb(pid);
    if (rootKb > this.rootPeak) this.rootPeak = rootKb;
    if (treeKb > this.treePeak) this.treePeak = treeKb;
    this.samples++;
  }

  /** Forces a fresh tree listing at the next sample (after spawning a batch, say). */
  rescan(): void {
    this.lastScan = -Infinity;
  }

  stop(): MemoryPeaks {
    this.rescan();
    this.sample();
    clearInterval(this.timer);
    return { rootKb: this.hasGateway ? this.rootPeak : null, treeKb: this.treePeak, samples: this.samples };
  }
}

export function isAlive(pid: number): boolean {
  const stat = procStat(pid);
  return stat !== null && stat.state !== "Z";
}
