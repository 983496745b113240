// Resident memory of a process and everything it started, read from /proc: a child runs inside bubblewrap,
// so the pid the broker holds is bwrap's, and the MCP server's memory is in its descendants.
import { readdirSync, readFileSync } from "node:fs";

/**
 * VmRSS of `pid` and its descendants in bytes, or null where /proc cannot say (the process is gone, or no
 * /proc). Pages shared between them (a runtime's text) count once per process, as `ps` shows them.
 */
export function processRssBytes(pid: number, procRoot = "/proc"): number | null {
  const own = rssOf(pid, procRoot);
  if (own === null) return null;
  let total = own;
  const pending = childrenOf(pid, procRoot);
  // A pid can only appear once in a tree, but a racing exit and pid reuse must not make this loop forever.
  const seen = new Set<number>([pid]);
  while (pending.length > 0) {
    const next = pending.pop()!;
    if (seen.has(next)) continue;
    seen.add(next);
    total += rssOf(next, procRoot) ?? 0;
    pending.push(...childrenOf(next, procRoot));
  }
  return total;
}

function rssOf(pid: number, procRoot: string): number | null {
  const status = readProc(`${procRoot}/${pid}/status`);
  if (status === null) return null;
  // Kernel threads and zombies have no VmRSS line: they hold no user memory.
  const match = /^VmRSS:\s+(\d+) kB$/m.exec(status);
  return match === null ? 0 : Number(match[1]) * 1024;
}

/** The direct children of every thread of `pid` (Linux lists them under the thread that forked them). */
export function childrenOf(pid: number, procRoot = "/proc"): number[] {
  let tasks: string[];
  try {
    tasks = readdirSync(`${procRoot}/${pid}/task`);
  } catch {
    return [];
  }
  const children: number[] = [];
  for (const task of tasks) {
    const listed = readProc(`${procRoot}/${pid}/task/${task}/children`);
    if (listed !== null) for (const child of listed.trim().split(/\s+/)) if (child !== "") children.push(Number(child));
  }
  return children;
}

/** A /proc file's text; null once the process has gone. */
function readProc(path: string): string | null {
  try {
    return readFileSync(path, "utf8");
  } catch {
    return null;
  }
}
