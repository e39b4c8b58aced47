namespace Vfio.Fuzz;

/// <summary>One decoder family of the wire protocol (docs/protocol.md), fuzzed as a target of its own.</summary>
public enum WireTarget
{
    /// <summary>The 32-byte handshake every connection starts with, after a mode byte (bit 0: the harness fixes the CRC).</summary>
    Handshake,
    /// <summary>The destination's 16-byte handshake reply.</summary>
    HandshakeReply,
    /// <summary>The 32-byte data packet header, after a mode byte as for the handshake.</summary>
    PacketHeader,
    /// <summary>A main-channel message body: the first byte is the message type, the rest its body.</summary>
    Body,
    /// <summary>A main channel's byte stream: framed messages over a real connection, each decoded as its type.</summary>
    Framing,
}

/// <summary>What a decoder did with an input that kept its contract.</summary>
public enum Outcome
{
    Accepted,
    Refused,
    /// <summary>The input selects no decoder (a body whose first byte is no message type).</summary>
    NotApplicable,
}

/// <summary>A decoder broke its contract: anything but a value that re-encodes canonically or a ProtocolException.</summary>
public sealed class ContractViolationException(string message, Exception? inner = null) : Exception(message, inner);

public static class WireTargets
{
    public static IReadOnlyList<WireTarget> All { get; } = Enum.GetValues<WireTarget>();

    /// <summary>The target's name on the command line and as its corpus folder.</summary>
    public static string Name(WireTarget t) => t switch
    {
        WireTarget.Handshake => "handshake",
        WireTarget.HandshakeReply => "handshake-reply",
        WireTarget.PacketHeader => "packet-header",
        WireTarget.Body => "body",
        WireTarget.Framing => "framing",
        _ => throw new ArgumentOutOfRangeException(nameof(t)),
    };

    public static WireTarget Parse(string name) =>
        All.FirstOrDefault(t => Name(t) == name, (WireTarget)(-1)) is var t && Enum.IsDefined(t)
            ? t
            : throw new ArgumentException($"unknown target '{name}' (one of: {string.Join(", ", All.Select(Name))})");
}
