// node fetch-checked.mjs URL SHA512_BASE64 DEST: download URL to DEST only if its sha512
// (base64, as npm's registry publishes it in dist.integrity) is SHA512_BASE64.
import { createHash } from "node:crypto";
import { writeFileSync } from "node:fs";

const [url, expected, dest] = process.argv.slice(2);
const response = await fetch(url);
if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
const body = Buffer.from(await response.arrayBuffer());
const actual = createHash("sha512").update(body).digest("base64");
if (actual !== expected) throw new Error(`${url}: sha512 ${actual}, expected ${expected}`);
writeFileSync(dest, body);
