// Whether a grant was revoked, for the registries that start children under it (legacy sessions, principals):
// a start asks once more while revocation notices arrived during its question, so none slips past it.

/** Answers whether a grant is still live; without one, every grant is. */
export type GrantIsLive = (grantId: string) => Promise<boolean>;

export class RevocationWatch {
  private notices = 0;

  constructor(private readonly grantIsLive: GrantIsLive | undefined) {}

  /** A token of some grant was revoked: a start asking right now must ask again. */
  noticed(): void {
    this.notices++;
  }

  /** Whether the grant has been revoked (none is without a grantIsLive). */
  async isRevoked(grantId: string): Promise<boolean> {
    return this.grantIsLive !== undefined && !(await this.grantIsLive(grantId));
  }

  /**
   * A start's last question before it registers its child: a revocation during the start found no child to
   * end. Asked until no notice arrived during the question, so none falls between the answer and the registration.
   */
  async liveAfterStart(grantId: string): Promise<boolean> {
    for (let asked = -1; asked !== this.notices; ) {
      asked = this.notices;
      if (await this.isRevoked(grantId)) return false;
    }
    return true;
  }
}
