"""IAM as the local stack and the tests apply it: the synthesized template's roles, IAM's
evaluation of their policies, and a botocore hook that refuses what a function's role does not
allow, the way AWS refuses it.

- `policy`: IAM's evaluation of policy statements (stdlib only).
- `cfn`: a template resolved as CloudFormation would resolve it (stdlib only).
- `calls`: which IAM action(s) on which resource(s) a botocore operation needs (stdlib only).
- `enforce`: the botocore hook, and the file a local Lambda container reads its role from.
- `synth`: the template from the real CDK app, cached by a hash of its inputs.

Local Lambda containers import `enforce` before the handler, so this package never imports the
local stack (moto, the sandbox) at import time.
"""
