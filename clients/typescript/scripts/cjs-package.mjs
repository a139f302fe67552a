// dist/cjs holds CommonJS while the package is "type": "module": this marker makes Node
// read the .js files there as CommonJS.
import { writeFileSync } from "node:fs";
writeFileSync(new URL("../dist/cjs/package.json", import.meta.url), JSON.stringify({ type: "commonjs" }) + "\n");
