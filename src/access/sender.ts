/**
 * Who is asking, for data that belongs to whoever made it (uploads, transfers, results, receipts): the token id,
 * else the client certificate (cert:<subject>), else anonymous. Set by the access guards; admin sees everything.
 * Another sender's upload or transfer answers 404, exactly like one that does not exist (403 would confirm it).
 */
import type { Response } from "express";

export interface Sender {
  owner: string;
  admin: boolean;
}

/** Without access control wired in (tools, tests of an open relay) the caller is anonymous and sees everything. */
export function senderOf(res: Response): Sender {
  return (res.locals.sender as Sender | undefined) ?? { owner: "anonymous", admin: true };
}

/** Does this sender see something created by `owner` (null: created before owners were kept: admin only)? */
export function ownedBy(sender: Sender, owner: string | null | undefined): boolean {
  return sender.admin || (owner !== null && owner !== undefined && owner === sender.owner);
}
