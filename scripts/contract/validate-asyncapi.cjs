// Validates an AsyncAPI document with @asyncapi/parser (the parser @asyncapi/cli's `validate`
// runs), resolving its $refs to the schema files. Exit 1 on any error-level diagnostic.
// Usage: node validate-asyncapi.cjs FILE  (NODE_PATH must reach @asyncapi/parser)
'use strict';
const path = require('path');
const { Parser, fromFile } = require('@asyncapi/parser');

async function main() {
  const file = path.resolve(process.argv[2] || 'docs/asyncapi.yaml');
  const { document, diagnostics } = await fromFile(new Parser(), file).parse();
  // Spectral severities: 0 error, 1 warning, 2 information, 3 hint.
  const names = ['error', 'warning', 'info', 'hint'];
  for (const d of diagnostics) {
    const where = d.path && d.path.length ? d.path.join('.') : '(document)';
    console.error(`${names[d.severity] || d.severity}: ${d.code}: ${d.message} at ${where}`);
  }
  const errors = diagnostics.filter((d) => d.severity === 0);
  if (!document || errors.length > 0) {
    console.error(`FAILED: ${file} is not a valid AsyncAPI document (${errors.length} errors)`);
    process.exit(1);
  }
  const messages = document.allMessages().length;
  const channels = document.allChannels().length;
  console.log(`${file}: valid AsyncAPI ${document.version()} (${channels} channels, ${messages} messages)`);
}

main().catch((e) => {
  console.error(`FAILED: ${e && e.stack ? e.stack : e}`);
  process.exit(1);
});
