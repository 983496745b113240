// Builds the C child (bench/child/echo.c) into bench/child/build/echo-c (gitignored), only when the
// source is newer than the binary; says clearly what to install when there is no C compiler.
import { existsSync, mkdirSync, statSync } from "node:fs";
import { join, resolve } from "node:path";

const CHILD_DIR = resolve(import.meta.dir, "../child");
export const C_SOURCE = join(CHILD_DIR, "echo.c");
export const C_BINARY = join(CHILD_DIR, "build/echo-c");
export const TS_CHILD = join(CHILD_DIR, "echo.ts");

export class NoCompiler extends Error {}

/** Returns the binary's path; throws NoCompiler (with what to do) or Error (with the compiler's output). */
export function buildCChild(): string {
  if (existsSync(C_BINARY) && statSync(C_BINARY).mtimeMs >= statSync(C_SOURCE).mtimeMs) return C_BINARY;
  const cc = [process.env.CC, "cc", "gcc", "clang"].find((name) => name && Bun.which(name) !== null);
  if (cc === undefined) {
    throw new NoCompiler(
      "no C compiler found (tried $CC, cc, gcc, clang): the 1,000-session scale point needs the compiled child.\n" +
        "  install one (Debian/Ubuntu: apt-get install gcc libc6-dev) or run with --scale 0 to skip the scale point",
    );
  }
  mkdirSync(join(CHILD_DIR, "build"), { recursive: true });
  const attempt = (extra: string[]) => Bun.spawnSync([cc, "-O2", "-Wall", ...extra, "-o", C_BINARY, C_SOURCE], { stderr: "pipe", stdout: "pipe" });
  // Static when the C library allows it (no dynamic loader at each spawn), dynamic otherwise.
  let result = attempt(["-static", "-s"]);
  if (result.exitCode !== 0) result = attempt(["-s"]);
  if (result.exitCode !== 0) throw new Error(`${cc} failed to build ${C_SOURCE}:\n${result.stderr.toString()}`);
  return C_BINARY;
}
