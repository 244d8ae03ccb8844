"""A relying party that checks a TeeSQL decision token with PyJWT alone.

Usage: verify_decision_token.py TOKEN JWKS_URL [NONCE_HEX]

The token is an EAR (draft-ietf-rats-ear-04) signed ES256 by the verifier; its keys are
at the verifier's /.well-known/jwks.json. Prints the claims as JSON; exits 0 when the
token verifies and records an allowed decision (and echoes NONCE_HEX when given), 1 when
it records a denied one, 2 when it does not verify.
"""

import base64
import json
import sys

import jwt

token, jwks_url = sys.argv[1], sys.argv[2]
nonce = bytes.fromhex(sys.argv[3]) if len(sys.argv) > 3 else None

try:
    key = jwt.PyJWKClient(jwks_url).get_signing_key_from_jwt(token)
    claims = jwt.decode(
        token,
        key.key,
        algorithms=["ES256"],
        options={"require": ["exp", "iat", "iss"]},
    )
except jwt.PyJWTError as e:
    print(f"the token does not verify: {e}", file=sys.stderr)
    sys.exit(2)

if claims.get("eat_profile") != "tag:ietf.org,2026:rats/ear#04":
    print(f"not an EAR: {claims.get('eat_profile')!r}", file=sys.stderr)
    sys.exit(2)
if nonce is not None:
    echoed = base64.urlsafe_b64decode(claims["eat_nonce"] + "=" * (-len(claims["eat_nonce"]) % 4))
    if echoed != nonce:
        print("the token was not made for this request (eat_nonce)", file=sys.stderr)
        sys.exit(2)

print(json.dumps(claims))
status = claims["submods"]["cpu0"]["ear_status"]
sys.exit(0 if claims["teesql"]["allow"] and status in ("affirming", "warning") else 1)
