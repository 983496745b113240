// Signs a user in to a broker headlessly, as an MCP client with a browser would: registration, the
// consent page (Allow), the Forgejo stand-in's sign-in, the code exchange with PKCE; returns the tokens.
import { signInFlow } from "./oauth-client.ts";

export interface SignedIn {
  accessToken: string;
  refreshToken: string;
  /** The client the sign-in registered (a public client with PKCE). */
  clientId: string;
  /** Seconds the access token lives. */
  expiresIn: number;
}

export interface SignInOptions {
  /** The stand-in user's login. */
  user: string;
  /** Where the broker sends the code; a loopback URL nobody listens on by default (the walk stops at it). */
  redirectUri?: string;
  clientName?: string;
}

/** Throws a SignInError whose `step` (and message) names the step that failed. */
export async function signIn(broker: { issuer: string }, options: SignInOptions): Promise<SignedIn> {
  const tokens = await signInFlow(broker.issuer, options);
  return { accessToken: tokens.accessToken, refreshToken: tokens.refreshToken, clientId: tokens.clientId, expiresIn: tokens.expiresIn };
}
