using System.Buffers;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Vfio.PeerBench;

/// <summary>A QMP failure: the connection, the framing, or a command QEMU refused (its error class and text). The reader's
/// messages say what went wrong; the client's say also which command or the greeting.</summary>
internal sealed class QmpException(string message) : Exception(message);

/// <summary>
/// QMP's framing: each message is one JSON object on its own line (QEMU ends them with CR LF). A line longer than
/// <see cref="MaxMessageBytes"/> is refused rather than buffered without bound.
/// Threads: used by one thread at a time (the client's caller).
/// </summary>
internal sealed class QmpLineReader(Stream stream)
{
    public const int MaxMessageBytes = 1 << 20;
    private readonly byte[] _buffer = new byte[64 * 1024];
    private int _start, _end;
    private readonly ArrayBufferWriter<byte> _line = new();

    /// <summary>The next message as a JSON object; end of stream, a timeout or a message that is not an object throw.</summary>
    public JsonObject ReadMessage()
    {
        _line.ResetWrittenCount();
        while (true)
        {
            int nl = Array.IndexOf(_buffer, (byte)'\n', _start, _end - _start);
            int take = (nl < 0 ? _end : nl) - _start;
            if (_line.WrittenCount + take > MaxMessageBytes)
                throw new QmpException($"a message longer than {MaxMessageBytes} bytes");
            _line.Write(_buffer.AsSpan(_start, take));
            if (nl >= 0)
            {
                _start = nl + 1;
                var text = Encoding.UTF8.GetString(_line.WrittenSpan).TrimEnd('\r');
                if (text.Length == 0) { _line.ResetWrittenCount(); continue; }
                JsonNode? node;
                try { node = JsonNode.Parse(text); }
                catch (JsonException e) { throw new QmpException($"a message that is not JSON ({e.Message}): {Clip(text)}"); }
                return node as JsonObject ?? throw new QmpException($"a message that is not a JSON object: {Clip(text)}");
            }
            _start = 0;
            try { _end = stream.Read(_buffer, 0, _buffer.Length); }
            catch (IOException e) when (e.InnerException is SocketException { SocketErrorCode: SocketError.TimedOut })
            {
                throw new QmpException("no message within the timeout");
            }
            if (_end == 0) throw new QmpException(_line.WrittenCount == 0 ? "connection closed" : "connection closed inside a message");
        }
    }

    private static string Clip(string s) => s.Length <= 200 ? s : s[..200] + "...";
}

/// <summary>
/// A QMP (QEMU Machine Protocol) client over QEMU's Unix socket: reads the greeting, negotiates capabilities, then runs
/// commands, each tagged with an id that its reply must carry. Asynchronous events that arrive in between are kept in
/// <see cref="Events"/>. Commands may be pipelined (<see cref="Send"/> several, then <see cref="Receive"/> each reply
/// in order), which is how a caller issues `stop` and `migrate` without a round trip between them.
/// Threads: one caller thread owns the client and every field.
/// </summary>
internal sealed class QmpClient : IDisposable
{
    private readonly Socket _socket;
    private readonly NetworkStream _stream;
    private readonly QmpLineReader _reader;
    private int _nextId;

    public List<JsonObject> Events { get; } = [];

    /// <summary>QEMU's version from the greeting, e.g. "10.0.2".</summary>
    public string Version { get; }

    public QmpClient(Socket socket, TimeSpan timeout)
    {
        _socket = socket;
        _socket.ReceiveTimeout = _socket.SendTimeout = (int)timeout.TotalMilliseconds;
        _stream = new NetworkStream(socket, ownsSocket: true);
        _reader = new QmpLineReader(_stream);
        JsonObject greeting;
        try { greeting = _reader.ReadMessage(); }
        catch (QmpException e) { throw new QmpException($"QMP greeting: {e.Message}"); }
        if (greeting["QMP"] is not JsonObject qmp)
            throw new QmpException($"QMP greeting: the first message is not a greeting: {greeting.ToJsonString()}");
        var v = qmp["version"]?["qemu"];
        Version = v is null ? "unknown" : FormattableString.Invariant($"{v["major"]}.{v["minor"]}.{v["micro"]}");
        Execute("qmp_capabilities");
    }

    /// <summary>Connects to QEMU's QMP socket, waiting up to <paramref name="timeout"/> for QEMU to create it.</summary>
    public static QmpClient Connect(string path, TimeSpan timeout, Func<string?>? whyNot = null)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (true)
        {
            var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            try
            {
                socket.Connect(new UnixDomainSocketEndPoint(path));
            }
            catch (SocketException e)
            {
                socket.Dispose();
                if (whyNot?.Invoke() is string why) throw new QmpException($"QMP {path}: {why}");
                if (DateTime.UtcNow > deadline) throw new QmpException($"QMP {path}: not accepting within {timeout.TotalSeconds:0} s ({e.Message})");
                Thread.Sleep(100);
                continue;
            }
            try
            {
                return new QmpClient(socket, timeout);
            }
            catch
            {
                socket.Dispose();
                throw;
            }
        }
    }

    /// <summary>Runs one command and returns its "return" value; QEMU's error is thrown with its class and text.</summary>
    public JsonNode? Execute(string command, JsonObject? arguments = null)
    {
        int id = Send(command, arguments);
        return Receive(command, id);
    }

    /// <summary>Writes one command without waiting for its reply; returns its id for <see cref="Receive"/>.</summary>
    public int Send(string command, JsonObject? arguments = null)
    {
        int id = ++_nextId;
        var message = new JsonObject { ["execute"] = command, ["id"] = id };
        if (arguments is not null) message["arguments"] = arguments;
        _stream.Write(Encoding.UTF8.GetBytes(message.ToJsonString() + "\n"));
        return id;
    }

    /// <summary>The reply to command <paramref name="id"/>, keeping the events that come first.</summary>
    public JsonNode? Receive(string command, int id)
    {
        while (true)
        {
            JsonObject m;
            try { m = _reader.ReadMessage(); }
            catch (QmpException e) { throw new QmpException($"QMP {command}: {e.Message}"); }
            if (m.ContainsKey("event")) { Events.Add(m); continue; }
            if (m["id"] is not JsonValue v || !v.TryGetValue(out int replyId) || replyId != id)
                throw new QmpException($"QMP {command}: a reply that is not for command id {id}: {m.ToJsonString()}");
            if (m["error"] is JsonObject error)
                throw new QmpException($"QMP {command}: {error["class"]}: {error["desc"]}");
            if (!m.ContainsKey("return")) throw new QmpException($"QMP {command}: a reply with neither return nor error: {m.ToJsonString()}");
            return m["return"];
        }
    }

    public void Dispose() => _stream.Dispose();
}
