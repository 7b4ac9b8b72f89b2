"""The process's Powertools Logger, Metrics and Tracer: one set, shared by handlers and engine."""

from __future__ import annotations

from aws_lambda_powertools import Logger, Metrics, Tracer

from crm_to_books.topology import METRICS_NAMESPACE, SERVICE_NAME

logger = Logger(service=SERVICE_NAME)
metrics = Metrics(namespace=METRICS_NAMESPACE, service=SERVICE_NAME)
tracer = Tracer(service=SERVICE_NAME)
