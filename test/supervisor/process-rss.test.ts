// Resident memory from /proc over a process tree: a sandboxed child's memory is in the server under bwrap,
// so the figure for the pid the broker holds must include its descendants; a gone pid has none.
import { expect, test } from "bun:test";
import { processRssBytes } from "../../src/supervisor/process-rss.ts";

const MIB = 1024 * 1024;

test("a shell whose child holds 64 MiB counts that child's memory; its own is a few MiB", async () => {
  // The inner process fills 64 MiB and says so; the shell itself stays small.
  const fill = "const b = Buffer.alloc(64 * 1024 * 1024, 1); console.log(process.pid); setInterval(() => b[0]++, 1000);";
  const shell = Bun.spawn(["sh", "-c", `${process.execPath} -e "${fill}"; :`], { stdout: "pipe" });
  let inner = 0;
  try {
    const reader = shell.stdout.getReader();
    inner = Number(new TextDecoder().decode((await reader.read()).value).trim());
    expect(inner).toBeGreaterThan(0);
    const shellOnly = Number(/^VmRSS:\s+(\d+) kB$/m.exec(await Bun.file(`/proc/${shell.pid}/status`).text())![1]) * 1024;
    expect(shellOnly).toBeLessThan(16 * MIB);
    expect(processRssBytes(shell.pid)!).toBeGreaterThan(shellOnly + 64 * MIB);
  } finally {
    if (inner > 0) process.kill(inner, "SIGKILL");
    shell.kill("SIGKILL");
    await shell.exited;
  }
});

test("a pid that is gone: null", async () => {
  const done = Bun.spawn(["true"]);
  await done.exited;
  expect(processRssBytes(done.pid)).toBeNull();
});
