-- Encrypted topics (docs/encryption.md): `{"mode": "end_to_end", "recipients": ["age1…"]}`,
-- null for a plaintext topic. End-to-end payloads are age files the server cannot read.
ALTER TABLE topics ADD COLUMN encryption jsonb;
