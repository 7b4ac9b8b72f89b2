"""The template tests' view of IAM: `crm_to_books_cli.iam` (the evaluator the local stack
enforces with), in the partitions, regions and accounts the tests synthesize for.

`Resolved(template, env)` resolves every intrinsic in one account and region (a hard-coded
`arn:aws:` then no longer matches in `aws-cn`); `allows(statements, request)` is IAM's rule
(an explicit Deny wins, else some Allow is needed). An unknown condition operator raises here
rather than guess.
"""

from __future__ import annotations

from crm_to_books_cli.iam.cfn import Env, Resolved
from crm_to_books_cli.iam.policy import Request, allows, granted

__all__ = ["ENVS", "Env", "Request", "Resolved", "allows", "granted"]

ENVS = (
    Env(),
    Env("aws-cn", "cn-north-1", "222233334444"),
    Env("aws-us-gov", "us-gov-west-1", "333344445555"),
)
