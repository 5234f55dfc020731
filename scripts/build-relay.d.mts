/** dist/relay.mjs: where scripts/build-relay.mjs writes the built relay. */
export declare const RELAY_BUILD: string;
/** Builds dist/relay.mjs unless it is newer than every source; returns its path. */
export declare function ensureRelayBuild(opts?: { force?: boolean }): Promise<string>;
