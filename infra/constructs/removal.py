"""What becomes of a stateful resource with a fixed name when its stack goes.

`KEEP_NAMED` keeps it when the stack is deleted or the resource replaced (its data and its name
survive; a new stack adopts it: `npx aws-cdk deploy --import-existing-resources`, see
docs/deploy.md), and removes it when the stack's creation rolls back, so a failed first deploy
leaves nothing behind that would make the retry fail with "already exists".
"""

from __future__ import annotations

from aws_cdk import RemovalPolicy

KEEP_NAMED = RemovalPolicy.RETAIN_ON_UPDATE_OR_DELETE
