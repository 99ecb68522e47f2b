//! The tables, as diesel sees them. One schema serves both backends: the two migration
//! trees create the same columns with the same types (a test compares them), and times are
//! unix milliseconds (`BIGINT`) so queries are the same on PostgreSQL and SQLite.

diesel::table! {
    api_keys (id) {
        id -> Text,
        user_id -> Text,
        org_id -> Text,
        role -> Text,
        hash -> Text,
        prefix -> Text,
        created_at -> BigInt,
        expires_at -> Nullable<BigInt>,
        revoked_at -> Nullable<BigInt>,
        allowed_models -> Text,
        last_used_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    usage_counters (subject, window_kind, window_start) {
        subject -> Text,
        window_kind -> Text,
        window_start -> BigInt,
        requests -> BigInt,
        tokens -> BigInt,
    }
}

diesel::table! {
    quota_overrides (subject) {
        subject -> Text,
        rps -> Nullable<Double>,
        burst -> Nullable<BigInt>,
        max_in_flight -> Nullable<BigInt>,
        daily_requests -> Nullable<BigInt>,
        daily_tokens -> Nullable<BigInt>,
        monthly_tokens -> Nullable<BigInt>,
        updated_at -> BigInt,
        tokens_per_minute -> Nullable<BigInt>,
        max_batches -> Nullable<BigInt>,
    }
}

diesel::table! {
    request_log (created_at, id) {
        id -> Text,
        request_id -> Text,
        created_at -> BigInt,
        user_id -> Text,
        org_id -> Text,
        model -> Text,
        cluster -> Text,
        framework -> Text,
        target -> Text,
        route -> Text,
        status -> Integer,
        error_code -> Nullable<Text>,
        prompt_tokens -> BigInt,
        completion_tokens -> BigInt,
        total_tokens -> BigInt,
        tokens_estimated -> Bool,
        latency_ms -> Double,
        ttft_ms -> Nullable<Double>,
        client_ip -> Nullable<Text>,
        stream -> Bool,
        attempts -> Integer,
        ending -> Text,
        prompt -> Nullable<Text>,
        completion -> Nullable<Text>,
    }
}

diesel::table! {
    files (id) {
        id -> Text,
        owner -> Text,
        filename -> Text,
        purpose -> Text,
        bytes -> BigInt,
        created_at -> BigInt,
    }
}

diesel::table! {
    batches (id) {
        id -> Text,
        owner -> Text,
        identity -> Text,
        endpoint -> Text,
        input_file_id -> Text,
        completion_window -> Text,
        status -> Text,
        metadata -> Nullable<Text>,
        model -> Nullable<Text>,
        cluster -> Nullable<Text>,
        framework -> Nullable<Text>,
        output_folder -> Nullable<Text>,
        output_file_id -> Nullable<Text>,
        error_file_id -> Nullable<Text>,
        errors -> Nullable<Text>,
        total -> BigInt,
        completed -> BigInt,
        failed -> BigInt,
        created_at -> BigInt,
        in_progress_at -> Nullable<BigInt>,
        finalizing_at -> Nullable<BigInt>,
        completed_at -> Nullable<BigInt>,
        failed_at -> Nullable<BigInt>,
        expires_at -> BigInt,
        expired_at -> Nullable<BigInt>,
        cancelling_at -> Nullable<BigInt>,
        cancelled_at -> Nullable<BigInt>,
        lease_owner -> Nullable<Text>,
        lease_until -> Nullable<BigInt>,
    }
}

diesel::table! {
    batch_items (batch_id, line_index) {
        batch_id -> Text,
        line_index -> BigInt,
        custom_id -> Text,
        ok -> Bool,
        result -> Text,
    }
}

diesel::allow_tables_to_appear_in_same_query!(
    api_keys,
    usage_counters,
    quota_overrides,
    request_log,
    files,
    batches,
    batch_items,
);

/// Every table the migrations create (both trees), for tests and `migrate` output.
pub const TABLES: [&str; 7] = [
    "api_keys",
    "usage_counters",
    "quota_overrides",
    "request_log",
    "files",
    "batches",
    "batch_items",
];
