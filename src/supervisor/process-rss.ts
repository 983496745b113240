// Reads a process's resident memory from /proc: its own and that of every process it started, because a
// sandboxed child is bwrap, its init and the server, and only their sum is what the child costs.
import { readFileSync, readdirSync } from "node:fs";

/** How deep a child's tree is followed; bwrap → init → server → its helpers is four. */
const MAX_DEPTH = 8;

/** VmRSS of one process in bytes, or null when it is gone (or not on Linux). */
function ownRssBytes(pid: number, procRoot: string): number | null {
  let status: string;
  try {
    status = readFileSync(`${procRoot}/${pid}/status`, "utf8");
  } catch {
    return null;
  }
  const match = /^VmRSS:\s+(\d+) kB$/m.exec(status);
  // A zombie has no VmRSS line: it holds no memory.
  return match === null ? 0 : Number(match[1]) * 1024;
}

/** The pids `pid` started, from every one of its threads' children list. */
function childrenOf(pid: number, procRoot: string): number[] {
  let tasks: string[];
  try {
    tasks = readdirSync(`${procRoot}/${pid}/task`);
  } catch {
    return [];
  }
  const out: number[] = [];
  for (const task of tasks) {
    try {
      for (const child of readFileSync(`${procRoot}/${pid}/task/${task}/children`, "utf8").split(" ")) if (child.trim() !== "") out.push(Number(child));
    } catch {
      // The thread ended between the listing and the read.
    }
  }
  return out;
}

/**
 * Resident bytes of `pid` and its descendants, or null when `pid` is gone. Pages shared between them
 * (a runtime's text) count once per process, as `ps` shows them.
 */
export function processRssBytes(pid: number, procRoot = "/proc"): number | null {
  const own = ownRssBytes(pid, procRoot);
  if (own === null) return null;
  let total = own;
  let level = childrenOf(pid, procRoot);
  for (let depth = 1; depth < MAX_DEPTH && level.length > 0; depth++) {
    const next: number[] = [];
    for (const child of level) {
      total += ownRssBytes(child, procRoot) ?? 0;
      next.push(...childrenOf(child, procRoot));
    }
    level = next;
  }
  return total;
}
