// Typed OAuth errors (RFC 6749 §5.2, RFC 7591 §3.2.2, RFC 6750 §3.1, RFC 8707): each carries its
// `error` code and renders itself; STATUS is the one place that maps a code to an HTTP status.

const STATUS: Record<string, number> = {
  invalid_request: 400,
  invalid_client: 401,
  invalid_grant: 400,
  unauthorized_client: 400,
  unsupported_grant_type: 400,
  invalid_scope: 400,
  invalid_target: 400,
  invalid_redirect_uri: 400,
  invalid_client_metadata: 400,
  invalid_token: 401,
  insufficient_scope: 403,
  too_many_requests: 429,
};

export class OAuthError extends Error {
  readonly status: number;
  constructor(
    readonly errorCode: string,
    readonly description: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(description);
    this.name = new.target.name;
    this.status = STATUS[errorCode] ?? 400;
  }

  toJSON(): { error: string; error_description: string } {
    return { error: this.errorCode, error_description: this.description };
  }

  toResponse(): Response {
    return Response.json(this.toJSON(), {
      status: this.status,
      headers: { "Cache-Control": "no-store", ...this.headers },
    });
  }
}

export class InvalidRequestError extends OAuthError {
  constructor(description: string) {
    super("invalid_request", description);
  }
}

export class InvalidClientError extends OAuthError {
  /** RFC 6749 §5.2: a client that tried HTTP Basic is told which scheme to use. */
  constructor(description: string, usedBasic = false) {
    super("invalid_client", description, usedBasic ? { "WWW-Authenticate": 'Basic realm="oauth"' } : {});
  }
}

export class UnsupportedGrantTypeError extends OAuthError {
  constructor(description: string) {
    super("unsupported_grant_type", description);
  }
}

export class InvalidRedirectUriError extends OAuthError {
  constructor(description: string) {
    super("invalid_redirect_uri", description);
  }
}

export class InvalidClientMetadataError extends OAuthError {
  constructor(description: string) {
    super("invalid_client_metadata", description);
  }
}

export class TooManyRequestsError extends OAuthError {
  constructor(readonly retryAfterS: number) {
    super("too_many_requests", `Too many requests from this address; retry in ${retryAfterS} s`, {
      "Retry-After": String(retryAfterS),
    });
  }
}

/**
 * RFC 6750 §3: a refused bearer token. The challenge always names our protected-resource
 * metadata (RFC 9728 §5.1) so clients can discover where to sign in.
 */
export class BearerTokenError extends OAuthError {
  constructor(
    errorCode: "invalid_request" | "invalid_token" | "insufficient_scope" | null,
    description: string,
    challenge: { resourceMetadataUrl: string; scope: string },
  ) {
    super(errorCode ?? "invalid_token", description, {
      "WWW-Authenticate": bearerChallenge(errorCode, description, challenge),
    });
    this.anonymous = errorCode === null;
  }

  /** No token was sent: RFC 6750 §3.1 says the challenge then carries no error code. */
  readonly anonymous: boolean;

  override toResponse(): Response {
    if (!this.anonymous) return super.toResponse();
    return Response.json(
      { error: "invalid_token", error_description: this.description },
      { status: 401, headers: { "Cache-Control": "no-store", ...this.headers } },
    );
  }
}

/** Builds an RFC 6750 `WWW-Authenticate: Bearer …` value with quoted-string escaping. */
export function bearerChallenge(
  errorCode: string | null,
  description: string,
  challenge: { resourceMetadataUrl: string; scope: string },
): string {
  const quote = (value: string) => `"${value.replace(/["\\]/g, "\\$&")}"`;
  const params = [`resource_metadata=${quote(challenge.resourceMetadataUrl)}`, `scope=${quote(challenge.scope)}`];
  if (errorCode !== null) params.unshift(`error=${quote(errorCode)}`, `error_description=${quote(description)}`);
  return `Bearer ${params.join(", ")}`;
}
