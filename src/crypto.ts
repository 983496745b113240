// Token minting, hashing and the sealing of upstream Forgejo tokens: the only place that
// touches key material, so every secret at rest is either a SHA-256 hash or AES-256-GCM ciphertext.
import { chmodSync, existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { timingSafeEqual } from "node:crypto";
import { join } from "node:path";

export type TokenKind = "at" | "rt" | "code" | "cs" | "state" | "csrf" | "browser";

/** A prefixed 256-bit random token, e.g. `fmb_at_…`; the prefix lets secret scanners recognise it. */
export function mintToken(kind: TokenKind): string {
  return `fmb_${kind}_${randomBase64Url(32)}`;
}

export function randomBase64Url(bytes: number): string {
  return Buffer.from(crypto.getRandomValues(new Uint8Array(bytes))).toString("base64url");
}

export function randomHex(bytes: number): string {
  return Buffer.from(crypto.getRandomValues(new Uint8Array(bytes))).toString("hex");
}

/** What the store keeps instead of a token: its SHA-256 in hex. */
export function hashToken(token: string): string {
  return Bun.CryptoHasher.hash("sha256", token, "hex");
}

/** Compares two strings in time independent of where they differ. */
export function constantTimeEqual(a: string, b: string): boolean {
  const left = Buffer.from(a);
  const right = Buffer.from(b);
  if (left.length !== right.length) return false;
  return timingSafeEqual(left, right);
}

/** AES-256-GCM with a fresh 96-bit nonce per seal; `associatedData` binds a ciphertext to its row. */
export class TokenSealer {
  private constructor(private readonly key: CryptoKey) {}

  static async fromRawKey(raw: Uint8Array): Promise<TokenSealer> {
    if (raw.length !== 32) throw new Error("sealing key must be 32 bytes");
    const key = await crypto.subtle.importKey("raw", new Uint8Array(raw), "AES-GCM", false, ["encrypt", "decrypt"]);
    return new TokenSealer(key);
  }

  /** `v1.<nonce>.<ciphertext+tag>` in base64url. */
  async sealUpstreamToken(plaintext: string, associatedData: string): Promise<string> {
    const iv = crypto.getRandomValues(new Uint8Array(12));
    const sealed = await crypto.subtle.encrypt(
      { name: "AES-GCM", iv, additionalData: new TextEncoder().encode(associatedData) },
      this.key,
      new TextEncoder().encode(plaintext),
    );
    return `v1.${Buffer.from(iv).toString("base64url")}.${Buffer.from(sealed).toString("base64url")}`;
  }

  async unsealUpstreamToken(sealed: string, associatedData: string): Promise<string> {
    const [version, iv, body] = sealed.split(".");
    if (version !== "v1" || iv === undefined || body === undefined) throw new Error("unknown sealed token format");
    const plain = await crypto.subtle.decrypt(
      { name: "AES-GCM", iv: Buffer.from(iv, "base64url"), additionalData: new TextEncoder().encode(associatedData) },
      this.key,
      Buffer.from(body, "base64url"),
    );
    return new TextDecoder().decode(plain);
  }
}

/** A secret file that others may read is a leaked secret: refused at start-up, with the command that fixes it. */
export class SecretFileExposedError extends Error {
  override readonly name = "SecretFileExposedError";
  constructor(path: string, mode: number, secret: string) {
    super(`${path} has mode ${mode.toString(8).padStart(4, "0")}, so other users may read ${secret}; run chmod 600 '${path}' and start again`);
  }
}

/** The refusal of a secret file whose mode (st_mode) grants its group or others anything; null when only its owner may use it. */
export function secretFileExposure(path: string, mode: number, secret: string): SecretFileExposedError | null {
  const permissions = mode & 0o777;
  return (permissions & 0o077) === 0 ? null : new SecretFileExposedError(path, permissions, secret);
}

/**
 * The sealing key from configuration, or the one generated on first start in the data directory
 * (directory 0700, key file 0600), so that a restart can still unseal what it stored. An existing key
 * file with any group or other permission throws SecretFileExposedError.
 */
export function loadOrCreateSealingKey(dataDir: string, configured: Uint8Array | null): Uint8Array {
  if (configured !== null) return configured;
  ensurePrivateDir(dataDir);
  const path = join(dataDir, "sealing.key");
  if (existsSync(path)) {
    const exposure = secretFileExposure(path, statSync(path).mode, "the sealing key");
    if (exposure !== null) throw exposure;
    const key = Buffer.from(readFileSync(path, "utf8").trim(), "base64");
    if (key.length !== 32) throw new Error(`${path} does not hold a 32-byte base64 key`);
    return new Uint8Array(key);
  }
  const key = crypto.getRandomValues(new Uint8Array(32));
  writeFileSync(path, Buffer.from(key).toString("base64") + "\n", { mode: 0o600, flag: "wx" });
  return key;
}

export function ensurePrivateDir(dir: string): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  chmodSync(dir, 0o700);
}
