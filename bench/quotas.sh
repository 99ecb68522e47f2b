# Sourced by bench/run.sh and bench/lib.sh: `lift_quotas`.

# Lifts the default per-user limits (50 requests/s would refuse most of the load), keeping
# the quota check on every request; each can still be set from outside.
lift_quotas() {
    export GATEWAY__QUOTAS__USER__REQUESTS_PER_SECOND=${GATEWAY__QUOTAS__USER__REQUESTS_PER_SECOND:-10000000}
    export GATEWAY__QUOTAS__USER__BURST=${GATEWAY__QUOTAS__USER__BURST:-10000000}
    export GATEWAY__QUOTAS__USER__REQUESTS_PER_DAY=${GATEWAY__QUOTAS__USER__REQUESTS_PER_DAY:-0}
    export GATEWAY__QUOTAS__USER__TOKENS_PER_DAY=${GATEWAY__QUOTAS__USER__TOKENS_PER_DAY:-0}
    export GATEWAY__QUOTAS__USER__TOKENS_PER_MONTH=${GATEWAY__QUOTAS__USER__TOKENS_PER_MONTH:-0}
    export GATEWAY__QUOTAS__USER__MAX_IN_FLIGHT=${GATEWAY__QUOTAS__USER__MAX_IN_FLIGHT:-0}
}
