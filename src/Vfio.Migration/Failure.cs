namespace Vfio.Migration;

/// <summary>Where the failure of a run came from, which decides whose account of it is shown.</summary>
public enum FailureOrigin
{
    /// <summary>This side found it: a device, a check, the peer breaking the protocol, a deadline.</summary>
    Local,
    /// <summary>The peer said so in an Error message or a failed Result.</summary>
    Peer,
    /// <summary>A connection was refused, lost, or silent past its timeout.</summary>
    Transport,
    /// <summary>The caller cancelled the run.</summary>
    Cancelled,
}

/// <summary>
/// Why a run failed: the first failure of a side wins. <see cref="Device"/> is the index of the device in the run's
/// device list (the same on both sides), null when the failure is not about one device. The message names neither the
/// device nor the side: <see cref="Describe"/> builds the text shown to a person.
/// </summary>
public sealed record RunFailure(FailureOrigin Origin, string Message, int? Device = null)
{
    public static RunFailure Cancelled { get; } = new(FailureOrigin.Cancelled, "cancelled");

    /// <summary>One line: the device by name, the peer's word marked as such.</summary>
    public string Describe(IReadOnlyList<string> deviceNames, string peerRole)
    {
        string device = Device is int i && i < deviceNames.Count ? $"{deviceNames[i]}: " : "";
        return Origin == FailureOrigin.Peer ? $"{peerRole}: {device}{Message}" : $"{device}{Message}";
    }
}

/// <summary>A failed step of a run, carrying what <see cref="RunFailure"/> needs; thrown by engine threads and caught by RunControl.</summary>
public class MigrationException(string message, int? device = null, FailureOrigin origin = FailureOrigin.Local) : Exception(message)
{
    /// <summary>Index of the device concerned in the run's device list, when there is one.</summary>
    public int? Device { get; } = device;
    public FailureOrigin Origin { get; } = origin;
}

/// <summary>A violation of the wire protocol by the peer (bad magic, CRC, index, body...).</summary>
public sealed class ProtocolException(string message, int? device = null) : MigrationException(message, device);

/// <summary>A connection that failed: refused, reset, closed early, or silent past its timeout.</summary>
public sealed class TransportException(string message) : MigrationException(message, null, FailureOrigin.Transport);
