// Token minting, hashing and AES-256-GCM sealing: what an operator relies on when a database
// file leaks (only hashes and ciphertext) and when the broker restarts (the key persists).
import { describe, expect, test } from "bun:test";
import { chmodSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { SecretFileExposedError, TokenSealer, hashToken, loadOrCreateSealingKey, mintToken } from "../src/crypto.ts";

describe("tokens", () => {
  test("prefixed, 256 bits of randomness, never repeated", () => {
    const tokens = new Set(Array.from({ length: 1000 }, () => mintToken("at")));
    expect(tokens.size).toBe(1000);
    for (const token of [...tokens].slice(0, 10)) {
      expect(token).toMatch(/^fmb_at_[A-Za-z0-9_-]{43}$/);
      expect(Buffer.from(token.slice(7), "base64url")).toHaveLength(32);
    }
  });

  test("hashes are SHA-256 hex", () => {
    expect(hashToken("abc")).toBe("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  });
});

describe("sealing", () => {
  test("round-trips, differs per seal, and refuses another row's associated data or a tampered ciphertext", async () => {
    const sealer = await TokenSealer.fromRawKey(crypto.getRandomValues(new Uint8Array(32)));
    const a = await sealer.sealUpstreamToken("gto_secret", "user:1");
    const b = await sealer.sealUpstreamToken("gto_secret", "user:1");
    expect(a).not.toBe(b);
    expect(a).not.toContain("gto_secret");
    expect(await sealer.unsealUpstreamToken(a, "user:1")).toBe("gto_secret");
    await expect(sealer.unsealUpstreamToken(a, "user:2")).rejects.toThrow();
    // A character inside the ciphertext, not its last: a last character's spare bits may decode to the same bytes.
    const at = a.length - 10;
    const tampered = a.slice(0, at) + (a[at] === "A" ? "B" : "A") + a.slice(at + 1);
    await expect(sealer.unsealUpstreamToken(tampered, "user:1")).rejects.toThrow();
    const other = await TokenSealer.fromRawKey(crypto.getRandomValues(new Uint8Array(32)));
    await expect(other.unsealUpstreamToken(a, "user:1")).rejects.toThrow();
  });

  test("the generated key persists with mode 0600 in a 0700 directory", () => {
    const parent = mkdtempSync(join(tmpdir(), "fmb-key-"));
    const dir = join(parent, "data");
    try {
      const first = loadOrCreateSealingKey(dir, null);
      const second = loadOrCreateSealingKey(dir, null);
      expect(Buffer.from(second).equals(Buffer.from(first))).toBe(true);
      expect(statSync(dir).mode & 0o777).toBe(0o700);
      expect(statSync(join(dir, "sealing.key")).mode & 0o777).toBe(0o600);
      expect(Buffer.from(readFileSync(join(dir, "sealing.key"), "utf8").trim(), "base64")).toHaveLength(32);
    } finally {
      rmSync(parent, { recursive: true, force: true });
    }
  });

  test.each(["0644", "0640", "0604", "0660", "0666"])("an existing key file of mode %s is refused with the command that fixes it", (mode) => {
    const dir = mkdtempSync(join(tmpdir(), "fmb-key-"));
    const path = join(dir, "sealing.key");
    const key = Buffer.alloc(32, 9);
    writeFileSync(path, key.toString("base64") + "\n");
    chmodSync(path, parseInt(mode, 8));
    try {
      expect(() => loadOrCreateSealingKey(dir, null)).toThrow(SecretFileExposedError);
      expect(() => loadOrCreateSealingKey(dir, null)).toThrow(`${path} has mode ${mode}, so other users may read the sealing key; run chmod 600 '${path}' and start again`);
      chmodSync(path, 0o600);
      expect(Buffer.from(loadOrCreateSealingKey(dir, null)).equals(key)).toBe(true);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("a key file only its owner can read (0400) is used", () => {
    const dir = mkdtempSync(join(tmpdir(), "fmb-key-"));
    const path = join(dir, "sealing.key");
    writeFileSync(path, Buffer.alloc(32, 5).toString("base64") + "\n", { mode: 0o400 });
    try {
      expect(Buffer.from(loadOrCreateSealingKey(dir, null)).equals(Buffer.alloc(32, 5))).toBe(true);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
