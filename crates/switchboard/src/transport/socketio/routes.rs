//! Event routes: a Socket.IO app's own client events (`socket.emit("join:conversation",
//! id)`) mapped by the configuration to subscribe, unsubscribe, publish, typing, presence
//! and user status, with templates over the event's arguments and the identity.
//!
//! Every route runs through the same session calls as the protocol's commands, so the
//! permission checks, rate limits and metrics are those of `subscribe`, `publish`…

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{json, Value};
use switchboard_protocol::command::{ChannelRequest, Request, RpcRequest, SubscribeRequest};
use switchboard_protocol::reply::ReplyBody;
use switchboard_protocol::socketio::encode_ack;
use switchboard_protocol::{Disconnect, ErrorCode, SharedJson};

use super::packets::{reply_error, send_error};
use super::{Conn, EVENT_TAG};
use crate::config::{RouteAction, RouteConfig};
use crate::event::Outgoing;
use crate::session::{Session, SessionError, EXCLUDE_CLIENT_TAG};
use crate::transport::command::{self, Executed};

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    /// `{0}`, `{1.user.id}`: an argument, then fields of it.
    Arg(usize, Vec<String>),
    /// `{sub}`: the connection's user id.
    Sub,
}

/// A parsed template such as `conversation:{0.id}`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Template(Vec<Part>);

impl Template {
    fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_owned()));
            }
            let after = &rest[open + 1..];
            let close = after
                .find('}')
                .ok_or_else(|| format!("{text:?}: unclosed '{{'"))?;
            parts.push(Self::placeholder(text, &after[..close])?);
            rest = &after[close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("{text:?}: '}}' without '{{'"));
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_owned()));
        }
        Ok(Self(parts))
    }

    fn placeholder(text: &str, name: &str) -> Result<Part, String> {
        if name == "sub" {
            return Ok(Part::Sub);
        }
        let mut path = name.split('.');
        let index = path
            .next()
            .and_then(|i| i.parse::<usize>().ok())
            .ok_or_else(|| {
                format!(
                    "{text:?}: unknown placeholder {{{name}}} (use {{0}}, {{0.field}} or {{sub}})"
                )
            })?;
        let fields: Vec<String> = path.map(str::to_owned).collect();
        if fields.iter().any(String::is_empty) {
            return Err(format!("{text:?}: empty field in {{{name}}}"));
        }
        Ok(Part::Arg(index, fields))
    }

    /// The value of a template that is one placeholder and nothing else.
    fn whole(&self, args: &[Value], user: &str) -> Option<Result<Value, String>> {
        match self.0.as_slice() {
            [Part::Arg(i, path)] => Some(lookup(args, *i, path).cloned()),
            [Part::Sub] => Some(Ok(Value::from(user))),
            _ => None,
        }
    }

    fn render(&self, args: &[Value], user: &str) -> Result<String, String> {
        let mut out = String::new();
        for part in &self.0 {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Sub => out.push_str(user),
                Part::Arg(i, path) => match lookup(args, *i, path)? {
                    Value::String(s) => out.push_str(s),
                    v @ (Value::Number(_) | Value::Bool(_)) => out.push_str(&v.to_string()),
                    _ => {
                        return Err(format!(
                            "argument {{{}}} is not a string or number",
                            show(*i, path)
                        ))
                    }
                },
            }
        }
        Ok(out)
    }
}

fn show(i: usize, path: &[String]) -> String {
    std::iter::once(i.to_string())
        .chain(path.iter().cloned())
        .collect::<Vec<_>>()
        .join(".")
}

fn lookup<'a>(args: &'a [Value], i: usize, path: &[String]) -> Result<&'a Value, String> {
    let mut v = args.get(i);
    for field in path {
        v = v.and_then(|v| match v {
            Value::Object(m) => m.get(field),
            Value::Array(a) => field.parse::<usize>().ok().and_then(|n| a.get(n)),
            _ => None,
        });
    }
    v.ok_or_else(|| format!("argument {{{}}} is missing", show(i, path)))
}

/// Renders a `data` value: every string in it is a template.
fn render_data(data: &Value, args: &[Value], user: &str) -> Result<Value, String> {
    Ok(match data {
        Value::String(s) => {
            let t = Template::parse(s)?;
            match t.whole(args, user) {
                Some(v) => v?,
                None => Value::String(t.render(args, user)?),
            }
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| render_data(v, args, user))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| Ok((k.clone(), render_data(v, args, user)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

fn check_data(data: &Value, errors: &mut Vec<String>, key: &str) {
    match data {
        Value::String(s) => errors.extend(Template::parse(s).err().map(|e| format!("{key}: {e}"))),
        Value::Array(items) => items.iter().for_each(|v| check_data(v, errors, key)),
        Value::Object(m) => m.values().for_each(|v| check_data(v, errors, key)),
        _ => {}
    }
}

/// What is wrong with the route at `key` (`socketio.routes[2]`), each naming its key.
pub(crate) fn route_errors(key: &str, route: &RouteConfig) -> Vec<String> {
    let mut errors = Vec::new();
    if route.event.is_empty() {
        errors.push(format!("{key}.event: must name the client's event"));
    }
    if route.action == RouteAction::Rpc && route.method.is_empty() {
        errors.push(format!("{key}.method: the rpc action needs a method"));
    }
    let needs_channel = !matches!(route.action, RouteAction::UserStatus | RouteAction::Rpc);
    if needs_channel && route.channel.is_empty() {
        errors.push(format!(
            "{key}.channel: the {:?} action needs a channel",
            route.action
        ));
    }
    if !route.channel.is_empty() {
        errors.extend(
            Template::parse(&route.channel)
                .err()
                .map(|e| format!("{key}.channel: {e}")),
        );
    }
    if route.action == RouteAction::UserStatus {
        match Template::parse(&route.user) {
            Ok(t) if t.whole(&[], "").is_some() => {}
            Ok(_) => errors.push(format!(
                "{key}.user: must be one placeholder, such as \"{{0}}\" or \"{{0.userId}}\""
            )),
            Err(e) => errors.push(format!("{key}.user: {e}")),
        }
    }
    if let Some(data) = &route.data {
        check_data(data, &mut errors, &format!("{key}.data"));
    }
    errors
}

/// The route configured for `event`, if any.
pub(super) fn find<'a>(session: &'a Session, event: &str) -> Option<&'a RouteConfig> {
    session
        .node()
        .config
        .socketio
        .routes
        .iter()
        .find(|r| r.event == event)
}

/// Runs a routed event. Returns the disconnect to apply.
pub(super) async fn run(
    conn: &Conn,
    route: &RouteConfig,
    ack: Option<u64>,
    raw_args: &[Box<serde_json::value::RawValue>],
) -> Option<Disconnect> {
    let session = &conn.session;
    let args: Vec<Value> = raw_args
        .iter()
        .map(|a| serde_json::from_str(a.get()).unwrap_or(Value::Null))
        .collect();
    match execute(conn, route, ack, &args).await {
        Ok(Some(answer)) => {
            if let Some(id) = ack {
                let frame = encode_ack(id, &answer);
                session.enqueue(Outgoing::frame(frame));
            }
            None
        }
        Ok(None) => None,
        Err(RouteError::Bad(message)) => {
            session.node().metrics.command_errors.inc();
            let message = format!("bad request: {message}");
            reply_error(session, ack, &route.event, ErrorCode::BadRequest, &message);
            session.protocol_error()
        }
        Err(RouteError::Session(SessionError::Reply(code))) => {
            reply_error(session, ack, &route.event, code, code.message());
            None
        }
        Err(RouteError::Session(SessionError::Rejected(e))) => {
            // The app backend's own error (a proxy's answer), as it gave it.
            send_error(session, ack, &route.event, *e);
            None
        }
        Err(RouteError::Session(SessionError::Disconnect(d))) => Some(d),
    }
}

enum RouteError {
    /// The arguments do not fit the route's templates.
    Bad(String),
    Session(SessionError),
}

impl From<SessionError> for RouteError {
    fn from(e: SessionError) -> Self {
        Self::Session(e)
    }
}

impl From<String> for RouteError {
    fn from(e: String) -> Self {
        Self::Bad(e)
    }
}

/// Runs the route; returns the acknowledgement's argument (`None`: already queued).
async fn execute(
    conn: &Conn,
    route: &RouteConfig,
    ack: Option<u64>,
    args: &[Value],
) -> Result<Option<Value>, RouteError> {
    let session = &conn.session;
    let user = session.user();
    let channel = || Template::parse(&route.channel)?.render(args, &user);
    let ok = json!({ "ok": true });
    match route.action {
        RouteAction::Subscribe => {
            let channel = channel()?;
            let req = SubscribeRequest {
                channel: channel.clone(),
                ..SubscribeRequest::default()
            };
            if let Executed::Subscribed(s) =
                command::execute(session, Request::Subscribe(req)).await?
            {
                conn.route_joined(&channel, Some(&s.result));
                // The acknowledgement goes ahead of the channel's first event.
                let first = ack.map(|id| Outgoing::frame(encode_ack(id, &ok)));
                s.activation.complete(first);
            }
            Ok(None)
        }
        RouteAction::Unsubscribe => {
            let channel = channel()?;
            conn.route_joined(&channel, None);
            let req = ChannelRequest { channel };
            command::execute(session, Request::Unsubscribe(req)).await?;
            Ok(Some(ok))
        }
        RouteAction::Publish | RouteAction::TypingStart | RouteAction::TypingStop => {
            let channel = channel()?;
            let data = match &route.data {
                Some(template) => render_data(template, args, &user)?,
                None => args.first().cloned().unwrap_or(Value::Null),
            };
            let typing = route.action != RouteAction::Publish;
            let mut tags = BTreeMap::new();
            let emit = if route.emit.is_empty() {
                &route.event
            } else {
                &route.emit
            };
            tags.insert(EVENT_TAG.to_owned(), emit.clone());
            if route.exclude_sender.unwrap_or(typing) {
                tags.insert(EXCLUDE_CLIENT_TAG.to_owned(), session.id.to_string());
            }
            let raw = serde_json::value::to_raw_value(&data)
                .map_err(|_| SessionError::Reply(ErrorCode::Internal))?;
            session.admit_command()?;
            session
                .publish_tagged(&channel, Some(SharedJson::from(raw)), Some(Arc::new(tags)))
                .await?;
            Ok(Some(ok))
        }
        RouteAction::Presence => {
            let req = ChannelRequest {
                channel: channel()?,
            };
            let Executed::Reply(ReplyBody::Presence(p)) =
                command::execute(session, Request::Presence(req)).await?
            else {
                return Err(SessionError::Reply(ErrorCode::Internal).into());
            };
            let mut users: Vec<&str> = p.presence.values().map(|c| &*c.user).collect();
            users.sort_unstable();
            users.dedup();
            Ok(Some(json!(users)))
        }
        RouteAction::UserStatus => user_status(session, route, args, &user).await,
        RouteAction::Rpc => {
            let data = match &route.data {
                Some(template) => render_data(template, args, &user)?,
                None => args.first().cloned().unwrap_or(Value::Null),
            };
            let data = serde_json::value::to_raw_value(&data)
                .map_err(|_| SessionError::Reply(ErrorCode::Internal))?;
            let req = RpcRequest {
                method: route.method.clone(),
                data: Some(data),
            };
            // Forward-to-backend hook: `Session::rpc` answers built-in methods; an RPC
            // proxy (the proxies issue) answers the others there, and its answer is
            // what the acknowledgement carries, as is.
            match command::execute(session, Request::Rpc(req)).await? {
                Executed::Reply(ReplyBody::Rpc(r)) => Ok(Some(
                    r.data
                        .and_then(|d| serde_json::from_str(d.get()).ok())
                        .unwrap_or(Value::Null),
                )),
                _ => Err(SessionError::Reply(ErrorCode::Internal).into()),
            }
        }
    }
}

/// `{userId, status: "online"|"offline"}` for one id, a list of them for a list.
async fn user_status(
    session: &Arc<Session>,
    route: &RouteConfig,
    args: &[Value],
    user: &str,
) -> Result<Option<Value>, RouteError> {
    let asked = Template::parse(&route.user)?
        .whole(args, user)
        .unwrap_or_else(|| Err("user must be one placeholder".to_owned()))?;
    let id = |v: &Value| match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        _ => Err(RouteError::Bad(
            "a user id must be a string or number".into(),
        )),
    };
    let (users, batch) = match &asked {
        Value::Array(items) => (items.iter().map(id).collect::<Result<Vec<_>, _>>()?, true),
        one => (vec![id(one)?], false),
    };
    let data = serde_json::value::to_raw_value(&json!({ "users": users }))
        .map_err(|_| SessionError::Reply(ErrorCode::Internal))?;
    let req = RpcRequest {
        method: "user_status".into(),
        data: Some(data),
    };
    let Executed::Reply(ReplyBody::Rpc(r)) = command::execute(session, Request::Rpc(req)).await?
    else {
        return Err(SessionError::Reply(ErrorCode::Internal).into());
    };
    let statuses: Value = r
        .data
        .and_then(|d| serde_json::from_str(d.get()).ok())
        .unwrap_or(Value::Null);
    let shaped: Vec<Value> = statuses["statuses"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|s| {
                    let online = s["online"].as_bool().unwrap_or(false);
                    json!({
                        "userId": s["user"],
                        "status": if online { "online" } else { "offline" },
                        "lastSeen": s["last_seen"],
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Some(if batch {
        Value::Array(shaped)
    } else {
        shaped.into_iter().next().unwrap_or(Value::Null)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_render_arguments_fields_and_the_user() {
        let args = [json!("42"), json!({"id": 7, "room": {"name": "a"}})];
        let t = Template::parse("conversation:{0}").unwrap();
        assert_eq!(t.render(&args, "ann").unwrap(), "conversation:42");
        let t = Template::parse("room:{1.room.name}:{1.id}:{sub}").unwrap();
        assert_eq!(t.render(&args, "ann").unwrap(), "room:a:7:ann");
        assert!(Template::parse("x:{2}")
            .unwrap()
            .render(&args, "ann")
            .is_err());
        assert!(Template::parse("x:{1}")
            .unwrap()
            .render(&args, "ann")
            .is_err());
    }

    #[test]
    fn bad_templates_are_refused_with_the_reason() {
        for bad in ["x:{0", "x:{name}", "x:}", "x:{0.}"] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
        let route = RouteConfig {
            event: "join".into(),
            channel: "conversation:{id}".into(),
            ..RouteConfig::default()
        };
        let errors = route_errors("socketio.routes[0]", &route);
        assert!(
            errors[0].starts_with("socketio.routes[0].channel:"),
            "{errors:?}"
        );
    }

    #[test]
    fn data_templates_keep_json_types_for_whole_placeholders() {
        let args = [json!({"conversationId": "c1", "n": 3})];
        let data = json!({"conversationId": "{0.conversationId}", "userId": "{sub}", "n": "{0.n}", "s": "n={0.n}"});
        assert_eq!(
            render_data(&data, &args, "ann").unwrap(),
            json!({"conversationId": "c1", "userId": "ann", "n": 3, "s": "n=3"})
        );
    }
}
