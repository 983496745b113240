// PKCE (RFC 7636) with S256 only, as OAuth 2.1 and MCP require: the shape checks for
// challenges and verifiers and the verification itself.

const VERIFIER = /^[A-Za-z0-9\-._~]{43,128}$/;
/** base64url of a SHA-256 digest: exactly 43 characters, no padding. */
const S256_CHALLENGE = /^[A-Za-z0-9_-]{43}$/;

export function isValidCodeVerifier(verifier: string): boolean {
  return VERIFIER.test(verifier);
}

export function isValidS256Challenge(challenge: string): boolean {
  return S256_CHALLENGE.test(challenge);
}

export function s256Challenge(verifier: string): string {
  return new Bun.CryptoHasher("sha256").update(verifier).digest("base64url");
}

export function verifyS256(verifier: string, challenge: string): boolean {
  return isValidCodeVerifier(verifier) && s256Challenge(verifier) === challenge;
}
