//! Sessions in Amazon DynamoDB, through the official SDK.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::config::timeout::TimeoutConfig;
use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::operation::update_item::{UpdateItemError, UpdateItemOutput};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, ConditionCheck, GlobalSecondaryIndex, KeySchemaElement, KeyType,
    Projection, ProjectionType, Put, ReturnValue, ReturnValuesOnConditionCheckFailure, ScalarAttributeType,
    TableStatus, TimeToLiveSpecification, TimeToLiveStatus, TransactWriteItem,
};
use serde_json::{Map, Value};
use time::OffsetDateTime;
use tracing::instrument::WithSubscriber;

use super::field_name::decode as decode_key;
use super::{ExpiredBatch, PageCursor, SessionInfo, SessionsPage, Store};
use crate::record::{from_millis, to_millis};
use crate::{Change, Device, Error, ErrorKind, Meta, Record, Result, SessionLimit, StoreKey};

/// One stored session: a DynamoDB item.
type Item = HashMap<String, AttributeValue>;

/// The version of the item layout, kept in each item's `v`.
const LAYOUT_VERSION: i64 = 1;

// The item's attributes. Expressions always name them through placeholders
// (`#n0`), so DynamoDB's reserved words (`data`, `ttl`, …) never get in the way.
/// The partition key: the store key's hex form.
const KEY: &str = "session_key";
const V: &str = "v";
/// Absent for an anonymous session, which the user index then leaves out.
const USER: &str = "user_id";
/// A map of %-encoded session keys to JSON texts.
const DATA: &str = "data";
const CREATED: &str = "created_ms";
const ACTIVE: &str = "last_active_ms";
const EXPIRES: &str = "expires_ms";
const ABSOLUTE: &str = "absolute_ms";
const PERMANENT: &str = "permanent";
const AGENT: &str = "user_agent";
const IP: &str = "ip";
const SIBLINGS: &str = "siblings";
/// The expiry in Unix seconds, for the table's TTL.
const TTL: &str = "expires_at";
/// Bumped by every change, for the changes too large for one expression.
const VERSION: &str = "version";
/// The global secondary index on `user_id`.
const USER_INDEX: &str = "user_id-index";
/// What the user index holds of each item besides its keys: the listing
/// entry, never the data.
const LISTED: [&str; 9] = [V, CREATED, ACTIVE, EXPIRES, ABSOLUTE, PERMANENT, AGENT, IP, SIBLINGS];

/// How long one call may take, its retries included, before the store
/// answers `Unavailable`. DynamoDB answers in milliseconds; DynamoDB Local
/// on a loaded two-core machine took over 3 s for reads queued behind 200
/// writes to one item, hence the room.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one attempt of a call may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// DynamoDB's limit on an expression's length; a change whose expression
/// would be longer is written whole (see [`DynamoDbStore`]).
const MAX_EXPRESSION: usize = 4096;
/// How often a whole-data write is retried when another writer came between
/// its read and its write.
const ATTEMPTS: usize = 200;
/// How often a call is tried again when it met a transaction on the same item.
const CONFLICT_ATTEMPTS: u64 = 20;
/// Items read per page of a user's sessions.
const USER_PAGE: i32 = 1000;
/// The most sessions of one user a listing or clearing reads before it
/// gives up: a bound on the memory and time one call takes.
const MAX_USER_SESSIONS: usize = 100_000;
/// Deletes in flight at once when a user's sessions are cleared.
const DELETE_CONCURRENCY: usize = 16;
/// How long `connect` waits for a new table and its index to become active.
const TABLE_PATIENCE: Duration = Duration::from_secs(120);

/// Sessions in an Amazon DynamoDB table, one item per session, through the
/// official SDK (`aws-sdk-dynamodb`, its hyper client with rustls on ring).
///
/// ```text
/// { session_key: <store key, the partition key>, v: 1, user_id?, data: { <key>: <JSON text>, … },
///   created_ms, last_active_ms, expires_ms, absolute_ms?, permanent: 0 | 1,
///   user_agent?, ip?, siblings: <JSON text>, expires_at: <Unix seconds, the TTL>, version }
/// ```
///
/// - A global secondary index on `user_id` (holding the listing fields, not
///   the data) serves a user's sessions: a query of that user's items, so
///   its cost grows with the user's sessions, never with the table.
///   Anonymous sessions have no `user_id` and stay out of it.
/// - Expiry: the table's TTL on `expires_at` lets DynamoDB delete expired
///   items by itself, but that lags (up to days), so every read and every
///   conditional write checks `expires_ms`: an expired session is never
///   returned or changed. `delete_expired_batch` is therefore a no-op: a scan of
///   the whole table would cost more than the space it frees.
/// - `load` is a strongly consistent `GetItem`. A change is one
///   `UpdateItem` — `SET` and `REMOVE` on `data.<key>` — conditional on
///   the item existing and being live, so concurrent changes to different
///   keys all survive and a change to a deleted session matches nothing
///   (`Gone`) instead of recreating it. A change too large for one
///   expression (DynamoDB allows 4 KB; a few hundred keys) reads the item
///   and writes its whole data back, conditional on `version`, retrying if
///   another writer came between.
/// - A login's new session is written in one transaction with a check that
///   the session it replaces is still live. The session cap is counted
///   first, then applied, so logins at the same moment may pass it (by one
///   session each; see [`Store::create_login`](crate::store::Store::create_login)).
/// - Values are kept as JSON text, which round-trips every JSON number;
///   keys DynamoDB cannot take as map keys (the empty key) and those holding
///   `%` or NUL are stored %-encoded.
/// - An item is at most 400 KB: a larger session is refused with
///   `TooLarge`.
///
/// Reading the user index is eventually consistent on DynamoDB (global
/// secondary indexes always are): a session created a moment before a
/// user's sessions are listed or cleared may be missing from that listing
/// (DynamoDB Local updates the index at once). Logout everywhere lists
/// again after clearing, which narrows that window but cannot close it.
///
/// The SDK's own tracing is muted during the store's calls: at trace level
/// it prints whole requests and replies, which hold store keys and session
/// data.
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
/// use multisession::store::DynamoDbStore;
/// // DynamoDB Local:
/// let store = DynamoDbStore::connect("http://127.0.0.1:8000", "sessions").await?;
/// # let _ = store;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct DynamoDbStore {
    client: Client,
    table: String,
    requests: Arc<AtomicU64>,
}

impl std::fmt::Debug for DynamoDbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamoDbStore").field("table", &self.table).finish_non_exhaustive()
    }
}

/// The store's error for a failed call. A reply's message can quote what
/// the request held (a key, a value), so a refusal keeps only DynamoDB's
/// error code; a call that could not be sent keeps its cause (a connection
/// error), which holds nothing of the request.
fn failed<E, R>(what: &str, e: SdkError<E, R>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    let prefix = "the DynamoDB session store failed";
    match e {
        SdkError::ServiceError(_) => {
            // The server's own text: kept only if it looks like an error
            // code, and short.
            let code = e
                .code()
                .filter(|c| c.len() <= 64 && c.bytes().all(|b| b.is_ascii_alphanumeric() || b".#:_-".contains(&b)))
                .unwrap_or("no error code");
            if code == "ValidationException" && e.message().is_some_and(|m| m.contains("Item size")) {
                return Error::new(ErrorKind::TooLarge, "a session is larger than a DynamoDB item can be (400 KB)");
            }
            Error::new(ErrorKind::Unavailable, format!("{prefix}: DynamoDB refused {what} ({code})"))
        }
        SdkError::TimeoutError(_) => Error::new(ErrorKind::Unavailable, format!("{prefix}: {what} timed out")),
        SdkError::DispatchFailure(_) => match e.into_source() {
            Ok(source) => Error::unavailable(format!("{prefix}: {what} could not be sent"), source),
            Err(_) => Error::new(ErrorKind::Unavailable, format!("{prefix}: {what} could not be sent")),
        },
        SdkError::ResponseError(_) => {
            Error::new(ErrorKind::Unavailable, format!("{prefix}: {what} got a reply that does not decode"))
        }
        _ => Error::new(ErrorKind::Unavailable, format!("{prefix}: {what} could not be built")),
    }
}

/// Whether DynamoDB refused a write because its condition did not hold.
fn condition_failed<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> bool {
    e.code() == Some("ConditionalCheckFailedException")
}

fn now_ms() -> i64 {
    to_millis(OffsetDateTime::now_utc())
}

fn number(n: i64) -> AttributeValue {
    AttributeValue::N(n.to_string())
}

fn text(s: impl Into<String>) -> AttributeValue {
    AttributeValue::S(s.into())
}

/// The TTL value of an expiry: Unix seconds, rounded up.
fn ttl_seconds(t: OffsetDateTime) -> i64 {
    to_millis(t).div_euclid(1000) + i64::from(to_millis(t).rem_euclid(1000) > 0)
}

/// A DynamoDB map key for a session key: the empty key is not one, and NUL
/// is encoded too, so no backend's handling of it matters.
fn encode_key(key: &str) -> String {
    super::field_name::encode(key, &['\0'], &[])
}

fn json_text(value: &Value) -> Result<AttributeValue> {
    Ok(text(serde_json::to_string(value)?))
}

/// Expression attribute names and values, numbered as they are added.
#[derive(Default)]
struct Expression {
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
}

impl Expression {
    fn name(&mut self, name: &str) -> String {
        let placeholder = format!("#n{}", self.names.len());
        self.names.insert(placeholder.clone(), name.to_owned());
        placeholder
    }

    fn value(&mut self, value: AttributeValue) -> String {
        let placeholder = format!(":v{}", self.values.len());
        self.values.insert(placeholder.clone(), value);
        placeholder
    }

    /// `#k = :v` for an attribute of the item.
    fn assign(&mut self, name: &str, value: AttributeValue) -> String {
        format!("{} = {}", self.name(name), self.value(value))
    }

    /// The condition that the item exists and has not expired.
    fn live(&mut self) -> String {
        let (key, expires) = (self.name(KEY), self.name(EXPIRES));
        format!("attribute_exists({key}) AND {expires} > {}", self.value(number(now_ms())))
    }

    fn names(&self) -> Option<HashMap<String, String>> {
        (!self.names.is_empty()).then(|| self.names.clone())
    }

    fn values(&self) -> Option<HashMap<String, AttributeValue>> {
        (!self.values.is_empty()).then(|| self.values.clone())
    }
}

impl DynamoDbStore {
    /// A store on the DynamoDB endpoint at `endpoint` (DynamoDB Local's
    /// `http://host:port`, or any server of DynamoDB's API) with placeholder
    /// credentials, which DynamoDB Local accepts and does not check; for
    /// DynamoDB in AWS, build the client from your AWS configuration and use
    /// [`DynamoDbStore::from_client`]. Sessions go into `table`, which is
    /// created if missing (see [`DynamoDbStore::from_client`] for what is
    /// checked). Each call times out after 10 s, retries included.
    ///
    /// # Errors
    ///
    /// `Config` for a table name DynamoDB does not allow or a table of
    /// another layout; `Unavailable` if the endpoint does not answer.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
    /// let store = multisession::store::DynamoDbStore::connect("http://127.0.0.1:8000", "sessions").await?;
    /// # let _ = store;
    /// # Ok(()) }
    /// ```
    pub async fn connect(endpoint: &str, table: &str) -> Result<Self> {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let config = aws_sdk_dynamodb::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .endpoint_url(endpoint)
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("multisession", "local", None, None, "multisession"))
            .http_client(http)
            .timeout_config(timeouts())
            .retry_config(retries())
            .build();
        Self::from_client(Client::from_conf(config), table).await
    }

    /// Keeps sessions in `table` through a client the application built
    /// (for DynamoDB in AWS: from `aws_config::load_from_env()`, with
    /// [`aws_sdk_dynamodb`](crate::store::aws_sdk_dynamodb) of the version
    /// this crate re-exports). A client without an operation timeout gets
    /// the store's (10 s); its retry settings are kept.
    ///
    /// The table is made ready here, as [`SqlStore`](crate::store::SqlStore)
    /// creates its table and [`MongoStore`](crate::store::MongoStore) its
    /// indexes on connect: the key schema and the user index are part of
    /// how the store keeps its promises, so a missing table is created
    /// (on-demand billing, the `user_id` index, TTL on `expires_at`; this
    /// waits until it is active), and an existing one is checked, so that
    /// a table of another layout fails at start-up, not at the first
    /// request. The client's credentials need `DescribeTable` and
    /// `DescribeTimeToLive`, and `CreateTable` and `UpdateTimeToLive` for a
    /// table not yet made.
    ///
    /// # Errors
    ///
    /// `Config` for a table name DynamoDB does not allow or a table of
    /// another layout; `Unavailable` if DynamoDB does not answer or the
    /// table does not become active within two minutes.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
    /// use multisession::store::{DynamoDbStore, aws_sdk_dynamodb};
    /// use aws_sdk_dynamodb::config::{BehaviorVersion, Region};
    /// // In an application: `aws_config::load_from_env().await`, then `Client::new(&config)`.
    /// let config = aws_sdk_dynamodb::Config::builder()
    ///     .behavior_version(BehaviorVersion::latest())
    ///     .region(Region::new("eu-west-1"))
    ///     .build();
    /// let store = DynamoDbStore::from_client(aws_sdk_dynamodb::Client::from_conf(config), "sessions").await?;
    /// # let _ = store;
    /// # Ok(()) }
    /// ```
    pub async fn from_client(client: Client, table: &str) -> Result<Self> {
        check_table_name(table)?;
        let client = if client.config().timeout_config().and_then(TimeoutConfig::operation_timeout).is_none() {
            Client::from_conf(client.config().to_builder().timeout_config(timeouts()).build())
        } else {
            client
        };
        let store = Self { client, table: table.to_owned(), requests: Arc::new(AtomicU64::new(0)) };
        store.ensure_table().await?;
        Ok(store)
    }

    /// The SDK client, for tooling and tests.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
    /// # let store = multisession::store::DynamoDbStore::connect("http://127.0.0.1:8000", "sessions").await?;
    /// let tables = store.client().list_tables().send().await;
    /// # let _ = tables;
    /// # Ok(()) }
    /// ```
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The table's name.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
    /// let store = multisession::store::DynamoDbStore::connect("http://127.0.0.1:8000", "sessions").await?;
    /// assert_eq!(store.table(), "sessions");
    /// # Ok(()) }
    /// ```
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Calls this store has sent to DynamoDB so far (the table's set-up
    /// included): what DynamoDB does work, and bills, for.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> multisession::Result<()> {
    /// let store = multisession::store::DynamoDbStore::connect("http://127.0.0.1:8000", "sessions").await?;
    /// let before = store.operations();
    /// # let _ = before;
    /// # Ok(()) }
    /// ```
    pub fn operations(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Sends the request `request` makes, with the SDK's tracing muted,
    /// counted; again, after a short pause, while it meets a transaction on
    /// the same item (which DynamoDB refuses rather than queues).
    /// One conditional `UpdateItem` of the session under `key`, with the
    /// names and values `e` collected.
    async fn update_item(
        &self,
        key: &StoreKey,
        e: &Expression,
        update: &str,
        condition: &str,
    ) -> std::result::Result<UpdateItemOutput, SdkError<UpdateItemError, HttpResponse>> {
        self.send(|| {
            self.client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(Self::key_of(key)))
                .update_expression(update)
                .condition_expression(condition)
                .set_expression_attribute_names(e.names())
                .set_expression_attribute_values(e.values())
                .send()
        })
        .await
    }

    async fn send<T, E, R, F, Fut>(&self, request: F) -> std::result::Result<T, SdkError<E, R>>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = std::result::Result<T, SdkError<E, R>>>,
        E: ProvideErrorMetadata,
    {
        let mut attempt = 1;
        loop {
            self.requests.fetch_add(1, Ordering::Relaxed);
            let reply = request().with_subscriber(tracing::subscriber::NoSubscriber::default()).await;
            match reply {
                Err(e) if attempt < CONFLICT_ATTEMPTS && e.code() == Some("TransactionConflictException") => {
                    tokio::time::sleep(Duration::from_millis(5 * attempt)).await;
                    attempt += 1;
                }
                reply => return reply,
            }
        }
    }

    /// Creates the table if it is missing, waits until it and its index are
    /// active, checks its layout and turns on its TTL.
    async fn ensure_table(&self) -> Result<()> {
        let described = self.send(|| self.client.describe_table().table_name(&self.table).send()).await;
        match described {
            Ok(_) => {}
            Err(e) if e.code() == Some("ResourceNotFoundException") => self.create_table().await?,
            Err(e) => return Err(failed("describing the table", e)),
        }
        let deadline = tokio::time::Instant::now() + TABLE_PATIENCE;
        loop {
            let reply = self
                .send(|| self.client.describe_table().table_name(&self.table).send())
                .await
                .map_err(|e| failed("describing the table", e))?;
            let table =
                reply.table().ok_or_else(|| Error::new(ErrorKind::Unavailable, "DescribeTable named no table"))?;
            self.check_layout(table)?;
            let index = table.global_secondary_indexes().iter().find(|i| i.index_name() == Some(USER_INDEX));
            let active = table.table_status() == Some(&TableStatus::Active)
                && index.is_some_and(|i| i.index_status() == Some(&aws_sdk_dynamodb::types::IndexStatus::Active));
            if active {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                return Err(Error::new(
                    ErrorKind::Unavailable,
                    format!("dynamodb: the table {} did not become active within two minutes", self.table),
                ));
            }
            // Waiting on DynamoDB, which makes a table in seconds.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        self.enable_ttl().await
    }

    async fn create_table(&self) -> Result<()> {
        let built = |e: aws_sdk_dynamodb::error::BuildError| Error::config(format!("dynamodb: {e}"));
        let key = |name: &str| KeySchemaElement::builder().attribute_name(name).key_type(KeyType::Hash).build();
        let string = |name: &str| {
            AttributeDefinition::builder().attribute_name(name).attribute_type(ScalarAttributeType::S).build()
        };
        let projection = Projection::builder()
            .projection_type(ProjectionType::Include)
            .set_non_key_attributes(Some(LISTED.iter().map(|a| (*a).to_owned()).collect()))
            .build();
        let index = GlobalSecondaryIndex::builder()
            .index_name(USER_INDEX)
            .key_schema(key(USER).map_err(built)?)
            .projection(projection)
            .build()
            .map_err(built)?;
        let (key, user_string, key_string) =
            (key(KEY).map_err(built)?, string(USER).map_err(built)?, string(KEY).map_err(built)?);
        let created = self
            .send(|| {
                self.client
                    .create_table()
                    .table_name(&self.table)
                    .key_schema(key.clone())
                    .attribute_definitions(key_string.clone())
                    .attribute_definitions(user_string.clone())
                    .global_secondary_indexes(index.clone())
                    .billing_mode(BillingMode::PayPerRequest)
                    .send()
            })
            .await;
        match created {
            Ok(_) => Ok(()),
            // Another process made it meanwhile.
            Err(e) if e.code() == Some("ResourceInUseException") => Ok(()),
            Err(e) => Err(failed("creating the table", e)),
        }
    }

    /// Refuses a table whose key is not `session_key` or that has no
    /// `user_id` index.
    fn check_layout(&self, table: &aws_sdk_dynamodb::types::TableDescription) -> Result<()> {
        let hash_on = |schema: &[KeySchemaElement], name: &str| matches!(schema, [only] if only.attribute_name() == name && only.key_type() == &KeyType::Hash);
        let index = table.global_secondary_indexes().iter().find(|i| i.index_name() == Some(USER_INDEX));
        if hash_on(table.key_schema(), KEY) && index.is_some_and(|i| hash_on(i.key_schema(), USER)) {
            Ok(())
        } else {
            Err(Error::config(format!(
                "dynamodb: the table {} exists but is not a session table (a partition key {KEY} alone, \
                 and an index {USER_INDEX} on {USER})",
                self.table
            )))
        }
    }

    async fn enable_ttl(&self) -> Result<()> {
        let reply = self
            .send(|| self.client.describe_time_to_live().table_name(&self.table).send())
            .await
            .map_err(|e| failed("describing the table's TTL", e))?;
        let description = reply.time_to_live_description();
        let status = description.and_then(|d| d.time_to_live_status());
        if matches!(status, Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling)) {
            // On another attribute, no session would ever expire.
            return match description.and_then(|d| d.attribute_name()) {
                Some(TTL) | None => Ok(()),
                Some(_) => Err(Error::config(format!(
                    "dynamodb: the table {} expires items by another attribute than {TTL}; sessions would never \
                     expire: switch its TTL to {TTL}",
                    self.table
                ))),
            };
        }
        let spec = TimeToLiveSpecification::builder()
            .enabled(true)
            .attribute_name(TTL)
            .build()
            .map_err(|e| Error::config(format!("dynamodb: {e}")))?;
        let updated = self
            .send(|| {
                self.client
                    .update_time_to_live()
                    .table_name(&self.table)
                    .time_to_live_specification(spec.clone())
                    .send()
            })
            .await;
        match updated {
            Ok(_) => Ok(()),
            // Turned on by another process meanwhile.
            Err(e) if e.message().is_some_and(|m| m.contains("already enabled")) => Ok(()),
            Err(e) => Err(failed("turning on the table's TTL", e)),
        }
    }

    fn key_of(key: &StoreKey) -> HashMap<String, AttributeValue> {
        HashMap::from([(KEY.to_owned(), text(key.to_string()))])
    }

    /// The item under `key`, read consistently.
    async fn get(&self, key: &StoreKey) -> Result<Option<Item>> {
        let reply = self
            .send(|| {
                self.client
                    .get_item()
                    .table_name(&self.table)
                    .set_key(Some(Self::key_of(key)))
                    .consistent_read(true)
                    .send()
            })
            .await
            .map_err(|e| failed("a read", e))?;
        Ok(reply.item().cloned())
    }

    /// Every item of `user` in the user index (its listing fields), a page
    /// at a time.
    async fn user_items(&self, user: &str) -> Result<Vec<Item>> {
        let mut items = Vec::new();
        let mut after: Option<Item> = None;
        // A page holds at least one item unless the server misbehaves: a
        // run of empty pages that keep naming a next one ends the walk.
        let mut empty_pages = 0;
        loop {
            let reply = self
                .send(|| {
                    self.client
                        .query()
                        .table_name(&self.table)
                        .index_name(USER_INDEX)
                        .key_condition_expression("#u = :u")
                        .expression_attribute_names("#u", USER)
                        .expression_attribute_values(":u", text(user))
                        .limit(USER_PAGE)
                        .set_exclusive_start_key(after.clone())
                        .send()
                })
                .await
                .map_err(|e| failed("a query of the user index", e))?;
            items.extend_from_slice(reply.items());
            empty_pages = if reply.items().is_empty() { empty_pages + 1 } else { 0 };
            if empty_pages > 3 {
                return Err(Error::new(
                    ErrorKind::Unavailable,
                    "the DynamoDB session store failed: the user index kept answering empty pages",
                ));
            }
            if items.len() > MAX_USER_SESSIONS {
                return Err(Error::new(
                    ErrorKind::Unavailable,
                    format!("the DynamoDB session store lists at most {MAX_USER_SESSIONS} sessions of one user"),
                ));
            }
            match reply.last_evaluated_key() {
                Some(key) if !key.is_empty() => after = Some(key.clone()),
                _ => return Ok(items),
            }
        }
    }

    /// Writes `item` as a new session; with `replaces`, in one transaction
    /// with a check that that session is still live.
    async fn put_new(&self, item: Item, replaces: Option<&StoreKey>) -> Result<()> {
        let mut put = Expression::default();
        let absent = format!("attribute_not_exists({})", put.name(KEY));
        let Some(old) = replaces else {
            let written = self
                .send(|| {
                    self.client
                        .put_item()
                        .table_name(&self.table)
                        .set_item(Some(item.clone()))
                        .condition_expression(&absent)
                        .set_expression_attribute_names(put.names())
                        .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
                        .send()
                })
                .await;
            return match written {
                Ok(_) => Ok(()),
                // The SDK retries an attempt that timed out, which DynamoDB
                // may have carried out: an item equal to this one under a
                // fresh random key is that attempt's, not another session.
                Err(e) if matches!(e.as_service_error(), Some(PutItemError::ConditionalCheckFailedException(c)) if c.item() == Some(&item)) => {
                    Ok(())
                }
                Err(e) if condition_failed(&e) => {
                    Err(Error::new(ErrorKind::Conflict, "a session with this key exists"))
                }
                Err(e) => Err(failed("a create", e)),
            };
        };
        let mut check = Expression::default();
        let live = check.live();
        let built = |e: aws_sdk_dynamodb::error::BuildError| Error::config(format!("dynamodb: {e}"));
        let check = ConditionCheck::builder()
            .table_name(&self.table)
            .set_key(Some(Self::key_of(old)))
            .condition_expression(live)
            .set_expression_attribute_names(check.names())
            .set_expression_attribute_values(check.values())
            .build()
            .map_err(built)?;
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression(absent)
            .set_expression_attribute_names(put.names())
            .build()
            .map_err(built)?;
        for attempt in 1..=CONFLICT_ATTEMPTS {
            let written = self
                .send(|| {
                    self.client
                        .transact_write_items()
                        .transact_items(TransactWriteItem::builder().condition_check(check.clone()).build())
                        .transact_items(TransactWriteItem::builder().put(put.clone()).build())
                        .send()
                })
                .await;
            let Err(e) = written else { return Ok(()) };
            if let Some(TransactWriteItemsError::TransactionCanceledException(cancelled)) = e.as_service_error() {
                let reasons: Vec<Option<&str>> = cancelled.cancellation_reasons().iter().map(|r| r.code()).collect();
                match reasons.as_slice() {
                    [Some("ConditionalCheckFailed"), ..] => return Err(Error::gone()),
                    [_, Some("ConditionalCheckFailed")] => {
                        return Err(Error::new(ErrorKind::Conflict, "a session with this key exists"));
                    }
                    // A write to the replaced session (another tab) met the
                    // transaction: nothing was written, so it is sent again.
                    _ if attempt < CONFLICT_ATTEMPTS && reasons.contains(&Some("TransactionConflict")) => {
                        tokio::time::sleep(Duration::from_millis(5 * attempt)).await;
                        continue;
                    }
                    _ => {}
                }
            }
            return Err(failed("a login's create", e));
        }
        Err(Error::new(ErrorKind::Conflict, "a login kept meeting writes to the session it replaces"))
    }

    /// A change too large for one expression: the whole data read, changed
    /// and written back, conditional on the version read.
    async fn apply_whole(&self, key: &StoreKey, change: &Change) -> Result<()> {
        for _ in 0..ATTEMPTS {
            let item = self.get(key).await?.ok_or_else(Error::gone)?;
            if meta(&item)?.is_expired(OffsetDateTime::now_utc()) {
                return Err(Error::gone());
            }
            let version = integer(&item, VERSION).ok_or_else(|| corrupt(VERSION))?;
            let mut data = match item.get(DATA) {
                Some(AttributeValue::M(data)) => data.clone(),
                _ => return Err(Error::corrupt("stored session data is not a map")),
            };
            if change.clear {
                data.clear();
            }
            for name in &change.remove {
                data.remove(&encode_key(name));
            }
            for (name, value) in &change.set {
                data.insert(encode_key(name), json_text(value)?);
            }
            let mut e = Expression::default();
            let mut set = vec![e.assign(DATA, AttributeValue::M(data))];
            set.extend(change_fields(&mut e, change)?);
            let add = format!("{} {}", e.name(VERSION), e.value(number(1)));
            let update = format!("SET {} ADD {add}", set.join(", "));
            let condition = format!("{} = {} AND {}", e.name(VERSION), e.value(number(version)), e.live());
            let written = self.update_item(key, &e, &update, &condition).await;
            match written {
                Ok(_) => return Ok(()),
                // Changed, deleted or expired since the read: read again.
                Err(e) if condition_failed(&e) => continue,
                Err(e) => return Err(failed("a change", e)),
            }
        }
        Err(Error::new(ErrorKind::Conflict, "the session kept changing under concurrent writers"))
    }
}

fn timeouts() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(2))
        .operation_attempt_timeout(ATTEMPT_TIMEOUT)
        .operation_timeout(OPERATION_TIMEOUT)
        .build()
}

/// The SDK's standard retries (throttling, server errors, dropped
/// connections), three attempts, starting from a short pause so that a
/// store that is down answers well within the operation timeout.
fn retries() -> RetryConfig {
    RetryConfig::standard().with_max_attempts(3).with_initial_backoff(Duration::from_millis(100))
}

/// DynamoDB's rule for table names: 3 to 255 of `a-z A-Z 0-9 _ - .`.
fn check_table_name(table: &str) -> Result<()> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "_-.".contains(c);
    if (3..=255).contains(&table.len()) && table.chars().all(allowed) {
        Ok(())
    } else {
        Err(Error::config(format!(
            "dynamodb: {table:?} is not a DynamoDB table name (3 to 255 of a-z, A-Z, 0-9, '_', '-', '.')"
        )))
    }
}

/// `SET` clauses for what every change writes besides data: activity,
/// expiry, TTL, and the permanent flag and siblings if they changed.
fn change_fields(e: &mut Expression, change: &Change) -> Result<Vec<String>> {
    let mut set = vec![
        e.assign(ACTIVE, number(to_millis(change.last_active_at))),
        e.assign(EXPIRES, number(to_millis(change.expires_at))),
        e.assign(TTL, number(ttl_seconds(change.expires_at))),
    ];
    if let Some(permanent) = change.permanent {
        set.push(e.assign(PERMANENT, number(i64::from(permanent))));
    }
    if let Some(siblings) = &change.siblings {
        set.push(e.assign(SIBLINGS, text(serde_json::to_string(siblings)?)));
    }
    Ok(set)
}

fn corrupt(name: &str) -> Error {
    Error::corrupt(format!("stored session field {name} is missing or malformed"))
}

fn integer(item: &Item, name: &str) -> Option<i64> {
    item.get(name)?.as_n().ok()?.parse().ok()
}

/// A string attribute that may be absent (or null); of another type, corrupt.
fn optional_text<'a>(item: &'a Item, name: &str) -> Result<Option<&'a str>> {
    match item.get(name) {
        None | Some(AttributeValue::Null(_)) => Ok(None),
        Some(AttributeValue::S(s)) => Ok(Some(s)),
        Some(_) => Err(corrupt(name)),
    }
}

fn meta(item: &Item) -> Result<Meta> {
    if integer(item, V) != Some(LAYOUT_VERSION) {
        return Err(corrupt(V));
    }
    let ms = |name: &str| integer(item, name).and_then(from_millis).ok_or_else(|| corrupt(name));
    let ip = optional_text(item, IP)?.map(|ip| ip.parse::<IpAddr>().map_err(|_| corrupt(IP))).transpose()?;
    Ok(Meta {
        user_id: optional_text(item, USER)?.map(str::to_owned),
        created_at: ms(CREATED)?,
        last_active_at: ms(ACTIVE)?,
        expires_at: ms(EXPIRES)?,
        absolute_expires_at: match item.get(ABSOLUTE) {
            None | Some(AttributeValue::Null(_)) => None,
            Some(_) => Some(ms(ABSOLUTE)?),
        },
        permanent: match integer(item, PERMANENT) {
            Some(0) => false,
            Some(1) => true,
            _ => return Err(corrupt(PERMANENT)),
        },
        device: Device { user_agent: optional_text(item, AGENT)?.map(str::to_owned), ip },
        siblings: match optional_text(item, SIBLINGS)? {
            Some(text) => serde_json::from_str(text)?,
            None => Default::default(),
        },
    })
}

fn data(item: &Item) -> Result<Map<String, Value>> {
    let Some(AttributeValue::M(fields)) = item.get(DATA) else {
        return Err(Error::corrupt("stored session data is not a map"));
    };
    let mut data = Map::new();
    for (name, value) in fields {
        let text = value.as_s().map_err(|_| Error::corrupt("a stored session value is not JSON text"))?;
        data.insert(decode_key(name)?, serde_json::from_str(text)?);
    }
    Ok(data)
}

fn record(item: &Item) -> Result<Record> {
    let meta = meta(item)?;
    Ok(Record { data: data(item)?, meta })
}

fn store_key(item: &Item) -> Result<StoreKey> {
    item.get(KEY).and_then(|k| k.as_s().ok()).ok_or_else(|| corrupt(KEY))?.parse()
}

/// The item of a new session, as `create` writes it.
fn item_of(key: &StoreKey, record: &Record) -> Result<Item> {
    let meta = &record.meta;
    let mut data = HashMap::with_capacity(record.data.len());
    for (name, value) in &record.data {
        data.insert(encode_key(name), json_text(value)?);
    }
    let mut item = Item::from([
        (KEY.to_owned(), text(key.to_string())),
        (V.to_owned(), number(LAYOUT_VERSION)),
        (DATA.to_owned(), AttributeValue::M(data)),
        (CREATED.to_owned(), number(to_millis(meta.created_at))),
        (ACTIVE.to_owned(), number(to_millis(meta.last_active_at))),
        (EXPIRES.to_owned(), number(to_millis(meta.expires_at))),
        (PERMANENT.to_owned(), number(i64::from(meta.permanent))),
        (SIBLINGS.to_owned(), text(serde_json::to_string(&meta.siblings)?)),
        (TTL.to_owned(), number(ttl_seconds(meta.expires_at))),
        (VERSION.to_owned(), number(0)),
    ]);
    if let Some(user) = &meta.user_id {
        item.insert(USER.to_owned(), text(user));
    }
    if let Some(absolute) = meta.absolute_expires_at {
        item.insert(ABSOLUTE.to_owned(), number(to_millis(absolute)));
    }
    if let Some(user_agent) = &meta.device.user_agent {
        item.insert(AGENT.to_owned(), text(user_agent));
    }
    if let Some(ip) = meta.device.ip {
        item.insert(IP.to_owned(), text(ip.to_string()));
    }
    Ok(item)
}

#[async_trait]
impl Store for DynamoDbStore {
    async fn load(&self, key: &StoreKey) -> Result<Option<Record>> {
        let Some(item) = self.get(key).await? else { return Ok(None) };
        let meta = meta(&item)?;
        if meta.is_expired(OffsetDateTime::now_utc()) {
            return Ok(None);
        }
        Ok(Some(Record { data: data(&item)?, meta }))
    }

    async fn create(&self, key: &StoreKey, record: &Record) -> Result<()> {
        self.put_new(item_of(key, record)?, None).await
    }

    async fn create_login(
        &self,
        key: &StoreKey,
        record: &Record,
        replaces: Option<&StoreKey>,
        limit: Option<SessionLimit>,
    ) -> Result<Vec<SessionInfo>> {
        let item = item_of(key, record)?;
        let evict = match (record.meta.user_id.as_deref(), limit) {
            (Some(user), Some(limit)) => {
                let others = self.user_sessions(user).await?;
                let others = others.into_iter().filter(|s| s.key != *key && Some(&s.key) != replaces).collect();
                match limit.evictions(others) {
                    Ok(evict) => evict,
                    // A login for a session ended meanwhile is `Gone`, however
                    // full the user's sessions are.
                    Err(e) => match replaces {
                        Some(old) if self.load(old).await?.is_none() => return Err(Error::gone()),
                        _ => return Err(e),
                    },
                }
            }
            _ => Vec::new(),
        };
        self.put_new(item, replaces).await?;
        for info in &evict {
            self.delete(&info.key).await?;
        }
        Ok(evict)
    }

    async fn apply(&self, key: &StoreKey, change: &Change) -> Result<()> {
        let mut e = Expression::default();
        let mut set = change_fields(&mut e, change)?;
        let mut remove = Vec::new();
        if change.clear {
            let mut data = HashMap::with_capacity(change.set.len());
            for (name, value) in &change.set {
                data.insert(encode_key(name), json_text(value)?);
            }
            set.push(e.assign(DATA, AttributeValue::M(data)));
        } else if !change.set.is_empty() || !change.remove.is_empty() {
            // Named only when used: DynamoDB refuses an unused name.
            let data = e.name(DATA);
            for (name, value) in &change.set {
                let (field, value) = (e.name(&encode_key(name)), e.value(json_text(value)?));
                set.push(format!("{data}.{field} = {value}"));
            }
            // A key both removed and set ends up set, and DynamoDB refuses
            // one path named twice.
            for name in change.remove.iter().filter(|name| !change.set.contains_key(*name)) {
                remove.push(format!("{data}.{}", e.name(&encode_key(name))));
            }
        }
        let mut update = format!("SET {} ADD {} {}", set.join(", "), e.name(VERSION), e.value(number(1)));
        if !remove.is_empty() {
            update.push_str(&format!(" REMOVE {}", remove.join(", ")));
        }
        if update.len() > MAX_EXPRESSION {
            return self.apply_whole(key, change).await;
        }
        let live = e.live();
        let written = self.update_item(key, &e, &update, &live).await;
        match written {
            Ok(_) => Ok(()),
            Err(e) if condition_failed(&e) => Err(Error::gone()),
            // A stored `data` that is not a map has no paths to set.
            Err(e)
                if e.code() == Some("ValidationException")
                    && e.message().is_some_and(|m| m.contains("document path")) =>
            {
                Err(Error::corrupt("stored session data is not a map"))
            }
            Err(e) => Err(failed("a change", e)),
        }
    }

    async fn delete(&self, key: &StoreKey) -> Result<bool> {
        // Conditional on the item being there: DynamoDB answers a plain
        // delete's old item to one caller only, but DynamoDB Local answered
        // it to several deletes at the same moment, and the engine relies
        // on exactly one of two logins replacing a session hearing "yes".
        // A delete the SDK retries after an attempt that timed out but was
        // carried out answers "no": a login waiting on it then gives way,
        // and the browser logs in again; nothing is brought back.
        let reply = self
            .send(|| {
                self.client
                    .delete_item()
                    .table_name(&self.table)
                    .set_key(Some(Self::key_of(key)))
                    .condition_expression("attribute_exists(#k)")
                    .expression_attribute_names("#k", KEY)
                    .return_values(ReturnValue::AllOld)
                    .send()
            })
            .await;
        match reply {
            // A record past its expiry that DynamoDB still held was no session.
            Ok(reply) => Ok(reply.attributes().and_then(|old| integer(old, EXPIRES)).is_some_and(|ms| ms > now_ms())),
            Err(e) if condition_failed(&e) => Ok(false),
            Err(e) => Err(failed("a delete", e)),
        }
    }

    async fn user_sessions(&self, user: &str) -> Result<Vec<SessionInfo>> {
        let now = OffsetDateTime::now_utc();
        let mut sessions = Vec::new();
        for item in self.user_items(user).await? {
            let meta = meta(&item)?;
            if !meta.is_expired(now) {
                sessions.extend(SessionInfo::from_meta(store_key(&item)?, &meta));
            }
        }
        Ok(sessions)
    }

    async fn delete_user_sessions(&self, user: &str, keep: Option<&StoreKey>) -> Result<u64> {
        let mut keys = Vec::new();
        for item in self.user_items(user).await? {
            let key = store_key(&item)?;
            if Some(&key) != keep {
                keys.push(key);
            }
        }
        // Each delete answers whether it ended a live session; a few at a time.
        let (mut deleted, mut running, mut keys) = (0, tokio::task::JoinSet::new(), keys.into_iter());
        loop {
            while running.len() < DELETE_CONCURRENCY {
                let Some(key) = keys.next() else { break };
                let store = self.clone();
                running.spawn(async move { store.delete(&key).await });
            }
            let Some(done) = running.join_next().await else { return Ok(deleted) };
            let live = done.map_err(|e| Error::unavailable("a DynamoDB delete task failed", e))??;
            deleted += u64::from(live);
        }
    }

    async fn sessions_page(&self, cursor: Option<&PageCursor>, limit: usize) -> Result<SessionsPage> {
        // DynamoDB's own paging of a scan, from the last page's key; each
        // page reads at most `limit` items (and at most 1 MB).
        let limit = super::page_limit(limit)?;
        let after = super::cursor_key(cursor)?.map(|key| Self::key_of(&key));
        let reply = self
            .send(|| {
                self.client
                    .scan()
                    .table_name(&self.table)
                    .limit(i32::try_from(limit).unwrap_or(i32::MAX))
                    .consistent_read(true)
                    .set_exclusive_start_key(after.clone())
                    .send()
            })
            .await
            .map_err(|e| failed("a scan", e))?;
        let now = OffsetDateTime::now_utc();
        let mut page = SessionsPage::default();
        for item in reply.items() {
            match (store_key(item), record(item)) {
                (Ok(key), Ok(record)) if !record.meta.is_expired(now) => page.sessions.push((key, record)),
                (Ok(_), Ok(_)) => {}
                _ => page.unreadable += 1,
            }
        }
        let next = reply.last_evaluated_key().and_then(|key| key.get(KEY)).and_then(|k| k.as_s().ok());
        page.next = next.map(|key| PageCursor::new(key.as_str()));
        Ok(page)
    }

    async fn delete_expired_batch(&self) -> Result<ExpiredBatch> {
        // The table's TTL removes expired items; finding them here would
        // take a scan of the whole table.
        Ok(ExpiredBatch::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn awkward_keys_encode_to_valid_map_keys_and_back() {
        for key in ["", "%", "a.b", "$x", "nul\0l", "ключ", "plain", "#n0", ":v0"] {
            let field = encode_key(key);
            assert!(!field.is_empty() && !field.contains('\0'), "{field:?}");
            assert_eq!(decode_key(&field).expect("decodes"), key);
        }
    }

    #[test]
    fn ttl_rounds_up_to_whole_seconds() {
        let t = |ms: i64| from_millis(ms).expect("in range");
        assert_eq!(ttl_seconds(t(1_000)), 1);
        assert_eq!(ttl_seconds(t(1_001)), 2);
        assert_eq!(ttl_seconds(t(-1_500)), -1);
    }

    #[test]
    fn table_names_are_checked_as_dynamodb_checks_them() {
        for good in ["sessions", "t_0123", "a.b-c"] {
            assert!(check_table_name(good).is_ok(), "{good}");
        }
        for bad in ["", "ab", "has space", "ünï", &"x".repeat(256)] {
            assert_eq!(check_table_name(bad).expect_err(bad).kind(), ErrorKind::Config);
        }
    }

    #[test]
    fn a_record_round_trips_through_its_item() {
        let now = from_millis(now_ms()).expect("now");
        let record = Record {
            data: serde_json::from_str(r#"{"":1,"a.b":[true,null],"nul\u0000":"\u0000"}"#).expect("JSON"),
            meta: Meta {
                user_id: Some("23".into()),
                created_at: now,
                last_active_at: now,
                expires_at: now + time::Duration::hours(1),
                absolute_expires_at: Some(now + time::Duration::days(1)),
                permanent: true,
                device: Device { user_agent: Some(String::new()), ip: Some([127, 0, 0, 1].into()) },
                siblings: Default::default(),
            },
        };
        let key = StoreKey::derive("test", "a session");
        let item = item_of(&key, &record).expect("encodes");
        assert_eq!(super::record(&item).expect("decodes"), record);
        assert_eq!(store_key(&item).expect("a key"), key);
        let mut broken = item.clone();
        broken.insert(DATA.to_owned(), number(7));
        assert_eq!(super::record(&broken).expect_err("corrupt").kind(), ErrorKind::Corrupt);
        broken.insert(PERMANENT.to_owned(), number(2));
        assert_eq!(meta(&broken).expect_err("corrupt").kind(), ErrorKind::Corrupt);
    }
}
